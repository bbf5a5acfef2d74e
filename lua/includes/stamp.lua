-- stamp (included by every script that stamps a record, before money_frame): the bucket's
-- clock txn:clock:{b}.

-- A stamp past the bucket's last (microseconds since the epoch, a number), from Redis's
-- TIME reply `now`: the clock may step back (NTP, a failover to a host whose clock is
-- behind), and a user's statement orders their transactions by (created_at, id), so within
-- a bucket stamps must increase with ids. The caller keeps it (SET clock_key) once every
-- check has passed: a refused call writes nothing.
local function stamp_past_clock(clock_key, now)
  -- Exact in a double: microseconds since the epoch stay below 2^53 until the year 2255.
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last_us = tonumber(redis.call("GET", clock_key) or "0")
  assert(last_us, "invariant: txn:clock holds a number")
  if now_us <= last_us then
    return last_us + 1
  end
  return now_us
end
