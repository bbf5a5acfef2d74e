-- refund_login_attempt: give back a login attempt that login_attempt.lua counted in
-- advance but whose password was never checked (the server was too busy): as if it had
-- not been made.
--
-- KEYS[1]  throttle:login:addr:<address>              string: failures from the address
-- KEYS[2]  throttle:login:user:<name>:addr:<address>  hash: attempts, failures, next_at_ms
-- KEYS[3]  throttle:login:user:<name>:addrs           set: addresses failing for the username
-- ARGV[1]  address                                    as in KEYS[1] and KEYS[2]
--
-- Returns  the attempts of the username from the address after the refund

-- @include login_keys

if #KEYS ~= 3 or #ARGV ~= 1 or login_keys_name(KEYS, ARGV[1]) == nil then
  return redis.error_reply("refund_login_attempt: the keys of one username and address expected")
end
login_give_back(KEYS[1])
if redis.call("EXISTS", KEYS[2]) == 0 then
  return 0
end
local attempts = redis.call("HINCRBY", KEYS[2], "attempts", -1)
if attempts <= 0 then
  -- No failure and nothing in flight: as if the username had never been tried from here.
  redis.call("DEL", KEYS[2])
  redis.call("SREM", KEYS[3], ARGV[1])
  return 0
end
return attempts
