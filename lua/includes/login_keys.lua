-- login_keys (included by the username's login throttling scripts): the first two keys are
-- the counts of one username, at one address and across addresses, as
-- service/redis/keyspace.py names them; the username's hash tag puts them, and its lock,
-- in one Redis Cluster slot. The address's own count is another slot's
-- (login_address_attempt.lua):
--   KEYS[1]  throttle:login:{<name>}:addr:<address>
--   KEYS[2]  throttle:login:{<name>}:addrs
-- Returns the username as the keys spell it, or nil when they are not of one username and
-- ARGV[1] (the address).

local function login_keys_name(keys, address)
  if type(address) ~= "string" or address == "" or type(keys[2]) ~= "string" then
    return nil
  end
  local name = string.match(keys[2], "^throttle:login:{([^{}:]+)}:addrs$")
  if name == nil or keys[1] ~= "throttle:login:{" .. name .. "}:addr:" .. address then
    return nil
  end
  return name
end
