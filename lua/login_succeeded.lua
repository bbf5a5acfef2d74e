-- login_succeeded: a login counted in advance as a failure (login_attempt.lua) succeeded:
-- the username starts over at this address, since the client knows the password, so there
-- is nothing left to slow down there. The address's count, in another Redis Cluster slot,
-- is given back by login_address_give_back.lua.
--
-- KEYS[1]  throttle:login:{<name>}:addr:<address>  hash: attempts, failures, next_at_ms
-- KEYS[2]  throttle:login:{<name>}:addrs           set: addresses failing for the username
-- ARGV[1]  address                                 as in KEYS[1]
--
-- Returns  1

-- @include login_keys

if #KEYS ~= 2 or #ARGV ~= 1 or login_keys_name(KEYS, ARGV[1]) == nil then
  return redis.error_reply("login_succeeded: the keys of one username and address expected")
end
redis.call("DEL", KEYS[1])
redis.call("SREM", KEYS[2], ARGV[1])
return 1
