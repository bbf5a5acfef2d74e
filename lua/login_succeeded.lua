-- login_succeeded: a login counted in advance as a failure (login_attempt.lua) succeeded.
-- The address gets its attempt back, and the username starts over at this address: the
-- client knows the password, so there is nothing left to slow down there.
--
-- KEYS[1]  throttle:login:addr:<address>              string: failures from the address
-- KEYS[2]  throttle:login:user:<name>:addr:<address>  hash: attempts, failures, next_at_ms
-- KEYS[3]  throttle:login:user:<name>:addrs           set: addresses failing for the username
-- ARGV[1]  address                                    as in KEYS[1] and KEYS[2]
--
-- Returns  1

-- @include login_keys

if #KEYS ~= 3 or #ARGV ~= 1 or login_keys_name(KEYS, ARGV[1]) == nil then
  return redis.error_reply("login_succeeded: the keys of one username and address expected")
end
login_give_back(KEYS[1])
redis.call("DEL", KEYS[2])
redis.call("SREM", KEYS[3], ARGV[1])
return 1
