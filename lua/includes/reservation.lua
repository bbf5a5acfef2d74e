-- reservation (included by transfer_settle and transfer_void, after bucket and validate): the
-- end of a reservation of a transfer across buckets, outbound:{b}:<txn_id> (lua/transfer.lua
-- writes it).

-- Whether ARGV (txn_id, retention_s, request_ttl_s) and KEYS[1..4] (txn:stream,
-- outbound:<txn_id>, outbound:due, transit of the bucket) are those of ending reservation
-- txn_id.
local function valid_reservation_call(txn_id, retention_arg, request_ttl_arg)
  return #ARGV == 3 and valid_id(txn_id) and valid_positive(retention_arg, MAX_TTL_S)
    and valid_positive(request_ttl_arg, MAX_TTL_S)
    and KEYS[1] == bucket_key("txn:stream") and KEYS[2] == bucket_member_key("outbound", txn_id)
    and KEYS[3] == bucket_key("outbound:due") and KEYS[4] == bucket_key("transit")
end

-- The reservation's fields {state, amount, from, idem_key, refund_of, token, request, hold_id},
-- or nil when there is none; refund_of is nil unless it is a refund's (lua/refund.lua),
-- hold_id unless it is a hold's capture (lua/hold_capture_across.lua); request is the token
-- of the request that made it, which is its own token but for a batch's leg or a capture.
local function reservation_record(key)
  local record = redis.call("HMGET", key, "state", "amount", "from", "idem_key", "refund_of",
                            "token", "request", "hold_id")
  if not record[1] then
    return nil
  end
  return {state = record[1], amount = record[2], from = record[3], idem_key = record[4],
          refund_of = record[5] or nil, token = record[6], request = record[7],
          hold_id = record[8] or nil}
end

-- The key of the record of the request that made the reservation (includes/request_outcome.lua).
local function reservation_request_key(reservation)
  return bucket_member_key("req", reservation.from) .. ":" .. reservation.request
end

-- Ends a reserved reservation: its money leaves transit_key, its state becomes `state`, it is
-- kept retention_arg seconds, it leaves the due set, and its request's record counts one
-- reservation fewer open (request_ttl_arg: the record's expiry once none is). Every check of the caller has passed
-- before, and this one's own assertion comes before its writes.
local function end_reservation(reservation, key, due_key, transit_key, txn_id, state,
                               retention_arg, request_key, request_ttl_arg)
  assert(reservation.state == "reserved", "invariant: only a reserved reservation ends")
  local in_transit = tonumber(redis.call("GET", transit_key) or "0")
  assert(in_transit >= tonumber(reservation.amount),
    "invariant: a reservation is counted in transit")
  redis.call("DECRBY", transit_key, reservation.amount)
  redis.call("HSET", key, "state", state)
  redis.call("EXPIRE", key, retention_arg)
  redis.call("ZREM", due_key, txn_id)
  if reservation.hold_id then
    -- The captured hold's hash, kept while this was open, is kept as long as this now (its
    -- name built here: the hold is in this bucket, the payer's).
    redis.call("EXPIRE", bucket_member_key("hold", reservation.hold_id), retention_arg)
  end
  -- The request's record, one reservation fewer open (gone only after a loss of Redis's data).
  if redis.call("EXISTS", request_key) == 1
    and redis.call("HINCRBY", request_key, "open", -1) <= 0 then
    redis.call("EXPIRE", request_key, request_ttl_arg)
  end
end
