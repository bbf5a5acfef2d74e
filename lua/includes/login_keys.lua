-- login_keys (included by the login throttling scripts): the first three keys are the
-- counts of one username and one address, as service/redis/keyspace.py names them:
--   KEYS[1]  throttle:login:addr:<address>
--   KEYS[2]  throttle:login:user:<name>:addr:<address>
--   KEYS[3]  throttle:login:user:<name>:addrs
-- Returns the username as the keys spell it, or nil when they are not of one username and
-- ARGV[1] (the address).

local function login_keys_name(keys, address)
  if type(address) ~= "string" or address == "" or type(keys[3]) ~= "string" then
    return nil
  end
  local name = string.match(keys[3], "^throttle:login:user:([^:]+):addrs$")
  if name == nil or keys[1] ~= "throttle:login:addr:" .. address
    or keys[2] ~= "throttle:login:user:" .. name .. ":addr:" .. address then
    return nil
  end
  return name
end

-- A count given back: never below zero, and a missing key is left missing (a DECR would
-- leave -1 with no TTL: extra attempts for ever).
local function login_give_back(key)
  if (tonumber(redis.call("GET", key)) or 0) > 0 then
    redis.call("DECR", key)
  end
end
