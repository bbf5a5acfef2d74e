-- refund_login_attempt: give back a login attempt that login_attempt.lua counted in
-- advance but whose password was never checked (the server was too busy): as if it had
-- not been made. The address's count, in another Redis Cluster slot, is given back by
-- login_address_give_back.lua.
--
-- KEYS[1]  throttle:login:{<name>}:addr:<address>  hash: attempts, failures, next_at_ms
-- KEYS[2]  throttle:login:{<name>}:addrs           set: addresses failing for the username
-- ARGV[1]  address                                 as in KEYS[1]
--
-- Returns  the attempts of the username from the address after the refund

-- @include login_keys

if #KEYS ~= 2 or #ARGV ~= 1 or login_keys_name(KEYS, ARGV[1]) == nil then
  return redis.error_reply("refund_login_attempt: the keys of one username and address expected")
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
local attempts = redis.call("HINCRBY", KEYS[1], "attempts", -1)
if attempts <= 0 then
  -- No failure and nothing in flight: as if the username had never been tried from here.
  redis.call("DEL", KEYS[1])
  redis.call("SREM", KEYS[2], ARGV[1])
  return 0
end
return attempts
