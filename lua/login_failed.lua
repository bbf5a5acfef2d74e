-- login_failed: a login let in by login_attempt.lua had a wrong password (or no such
-- user). Past the free failures, each one makes the client wait before it may try this
-- username again from this address: delay_base_ms, doubled by each further failure, up
-- to delay_max_ms. Failures in flight at once are held by login_attempt.lua's maximum.
-- The address's count (login_address_attempt.lua) keeps the attempt: it is a failure.
--
-- KEYS[1]  throttle:login:{<name>}:addr:<address>  hash: attempts, failures, next_at_ms
-- ARGV[1]  failures_before_delay
-- ARGV[2]  delay_base_ms
-- ARGV[3]  delay_max_ms
--
-- Returns  the wait in ms before the next attempt (0: none, or the window ended meanwhile)

if #KEYS ~= 1 or not string.match(KEYS[1], "^throttle:login:{[^{}:]+}:addr:.") or #ARGV ~= 3 then
  return redis.error_reply("login_failed: one username and address key, three numbers")
end
for i = 1, 3 do
  if not string.match(ARGV[i], "^%d+$") or #ARGV[i] > 12 then
    return redis.error_reply("login_failed: ARGV[" .. i .. "] is not a whole number")
  end
end
-- Gone when its window ended while the password was checked: nothing is created.
if redis.call("EXISTS", KEYS[1]) == 0 then
  return 0
end
local before_delay, delay_base_ms, delay_max_ms = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3])
local failures = redis.call("HINCRBY", KEYS[1], "failures", 1)
local delay_ms = 0
if failures > before_delay then
  delay_ms = math.min(delay_base_ms * 2 ^ (failures - before_delay - 1), delay_max_ms)
end
local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call("HSET", KEYS[1], "next_at_ms", string.format("%d", now_ms + delay_ms))
return delay_ms
