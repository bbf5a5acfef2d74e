-- refund_login_attempt: give back a login attempt that was counted in advance
-- (service/throttle.py counts every attempt before the password is checked, so
-- that attempts in flight at once are all counted).
--
-- KEYS[1]  login-fail:user:<name> or login-fail:addr:<address>   string: attempts in the window
-- ARGV     none
--
-- Returns  the count after the refund, or 0 when the window has ended meanwhile:
--          a DECR of a missing key would leave -1 with no TTL, extra attempts forever.

if #KEYS ~= 1 or not string.match(KEYS[1], "^login%-fail:") then
  return redis.error_reply("refund_login_attempt: one login-fail: key expected")
end
if redis.call("EXISTS", KEYS[1]) == 1 then
  return redis.call("DECR", KEYS[1])
end
return 0
