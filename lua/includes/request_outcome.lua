-- request_outcome (included by the money scripts and lookup_request.lua): what became of
-- one money request, kept under the random token the API gives each of them, so that a
-- request whose reply was lost (a timeout, a dropped connection) is still answered with
-- what it did (service/redis/money.py).
--
-- The record is a hash under req:{b}:<user_id>:<token>: outcome, txn_id, created_at_us.
-- - A money script that moves money records outcome "ok" with its transaction, for the
--   outcome ttl_s (a setting: longer than the API waits for a lost reply's outcome).
-- - lookup_request.lua, finding no record, writes outcome "not_applied": the request has
--   not moved money, and now never will, because
-- - a money script that finds a record under its token answers that record and does
--   nothing else. A script still on its way when the lookup ran (Redis was paused, the
--   command sat in a socket buffer) is thereby stopped, and the lookup's answer stays true.
-- Refusals are not recorded: a refused request changed nothing, and a lookup that finds
-- no record answers just that.
-- - A request that reserved across buckets (a transfer, a refund, a batch's legs to other
--   buckets) keeps its record without expiry while any of its reservations is open (field
--   `open`: how many): recovery asks the record before it fences an expectation off
--   (service/redis/crossing.py), which must never happen to a reservation that was made.
--   The end of each reservation (includes/reservation.lua) counts it down, and the last
--   gives the record its ttl.

-- The reply recorded under the request's token ({outcome, txn_id, created_at_us, "0"}),
-- or nil when it has none.
local function recorded_request_outcome(key)
  local seen = redis.call("HMGET", key, "outcome", "txn_id", "created_at_us")
  if not seen[1] then
    return nil
  end
  return {seen[1], seen[2] or "", seen[3] or "", "0"}
end

-- Records reply ({outcome, txn_id, created_at_us, replayed}, all strings) under the
-- request's token for ttl_s.
local function record_request_outcome(key, ttl_s, reply)
  redis.call("HSET", key, "outcome", reply[1], "txn_id", reply[2], "created_at_us", reply[3])
  redis.call("EXPIRE", key, ttl_s)
end

-- Keeps the record of a request that made open_count reservations across buckets, without
-- expiry, until they end (above).
local function keep_request_open(key, open_count)
  redis.call("HSET", key, "open", open_count)
  redis.call("PERSIST", key)
end
