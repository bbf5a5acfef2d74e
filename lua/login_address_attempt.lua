-- login_address_attempt: the first step of a login, on the client address's own count
-- (its own Redis Cluster slot: the username's keys are in another, lua/login_attempt.lua).
-- May the address try a password? If so it is counted now, before the password is checked,
-- so that attempts in flight at once cannot slip past the limit: this script alone reads
-- and raises the count, atomically. lua/login_attempt.lua then asks the username's limits,
-- told this script's wait. When they refuse, or the password is never checked, or it was
-- right, login_address_give_back.lua gives the count back; a failure keeps it.
--
-- Why two scripts are as safe as the single one was: each count is read and raised by one
-- script, so neither can be passed by attempts in flight at once; an attempt checks its
-- password only when both took their count, and whichever part refuses, the other holds
-- nothing of it (the username's script counts nothing when told the address refused, and
-- the address's count is given back when the username's limits refuse). Between the two
-- steps a count is held a moment longer, which can only refuse another attempt, never let
-- one in. A refused address writes nothing here.
--
-- KEYS[1]  throttle:login:addr:<address>   string: failures (and checks in flight) from the
--                                          address
-- ARGV[1]  window_ms                       the count lives this long from its first attempt
-- ARGV[2]  max_failures_per_address        then the address is refused until its window ends
--
-- Returns  0: counted (until given back); else how many ms to wait.

if #KEYS ~= 1 or not string.match(KEYS[1], "^throttle:login:addr:[^{}]+$") or #ARGV ~= 2 then
  return redis.error_reply("login_address_attempt: one address key, two numbers")
end
for i = 1, 2 do
  if not string.match(ARGV[i], "^%d+$") or #ARGV[i] > 12 then
    return redis.error_reply("login_address_attempt: ARGV[" .. i .. "] is not a whole number")
  end
end
if (tonumber(redis.call("GET", KEYS[1])) or 0) >= tonumber(ARGV[2]) then
  return math.max(redis.call("PTTL", KEYS[1]), 1)
end
-- The window starts at its first attempt.
if redis.call("INCR", KEYS[1]) == 1 then
  redis.call("PEXPIRE", KEYS[1], ARGV[1])
end
return 0
