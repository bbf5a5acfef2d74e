-- fixed_window_limit: count events in a fixed window that starts with the first one, and
-- refuse past a limit (service/auth/window_limit.py): sign-ups per address, transfers to
-- unknown recipients per user. Nothing is written once the limit is reached, so a refused
-- client cannot make Redis hold more.
--
-- KEYS[1]  throttle:<what>:<whom>   string, TTL: the events counted in the window
-- ARGV[1]  limit                    events per window, decimal 1 .. 10^9
-- ARGV[2]  window_ms                decimal 1 .. 10^12
-- ARGV[3]  "count": count this event unless the limit is reached; "look": count nothing
--
-- Returns  0 when the limit is not reached (and with "count", the event was counted);
--          else the ms until the window ends.

if #KEYS ~= 1 or not string.match(KEYS[1], "^throttle:") or #ARGV ~= 3
  or not string.match(ARGV[1], "^[1-9]%d*$") or #ARGV[1] > 10
  or not string.match(ARGV[2], "^[1-9]%d*$") or #ARGV[2] > 13
  or (ARGV[3] ~= "count" and ARGV[3] ~= "look") then
  return redis.error_reply("fixed_window_limit: one throttle: key, limit, window_ms, count|look")
end

if (tonumber(redis.call("GET", KEYS[1])) or 0) >= tonumber(ARGV[1]) then
  return math.max(redis.call("PTTL", KEYS[1]), 1)
end
if ARGV[3] == "count" and redis.call("INCR", KEYS[1]) == 1 then
  redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
