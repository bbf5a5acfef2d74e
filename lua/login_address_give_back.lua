-- login_address_give_back: an attempt counted by login_address_attempt.lua is given back:
-- its login succeeded (a success is no failure), its password was never checked, or the
-- username's limits refused it (lua/login_attempt.lua).
--
-- KEYS[1]  throttle:login:addr:<address>   string: failures from the address
-- ARGV[1]  1: the username's limits refused the attempt, so it must leave nothing: a count
--          back at zero goes (a zero count and none are alike: the next attempt's INCR to 1
--          starts a new window either way); 0: a zero count stays until its window ends
--
-- Returns  the address's count after it

if #KEYS ~= 1 or not string.match(KEYS[1], "^throttle:login:addr:[^{}]+$")
  or #ARGV ~= 1 or (ARGV[1] ~= "0" and ARGV[1] ~= "1") then
  return redis.error_reply("login_address_give_back: one address key, and 0 or 1")
end
-- Never below zero, and a missing key is left missing (a DECR would leave -1 with no TTL:
-- extra attempts for ever).
local count = tonumber(redis.call("GET", KEYS[1])) or 0
if count <= 0 then
  return 0
end
if count == 1 and ARGV[1] == "1" then
  redis.call("DEL", KEYS[1])
  return 0
end
return redis.call("DECR", KEYS[1])
