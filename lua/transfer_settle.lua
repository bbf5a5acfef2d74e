-- transfer_settle: the last step of a transfer across buckets, on the payer's bucket, once
-- lua/transfer_credit.lua applied it on the payee's (docs/scaling.md, "Across buckets"):
-- the reservation becomes settled, its money leaves transit:{b} (it is in the payee's
-- balance now), and a transfer_settled record is appended. Safe to repeat.
--
-- KEYS[1]  txn:stream:{b}                 stream
-- KEYS[2]  outbound:{b}:<txn_id>          hash: the reservation (state set to "settled")
-- KEYS[3]  outbound:due:{b}               sorted set: member txn_id
-- KEYS[4]  transit:{b}                    string: kopecks in flight (lowered)
-- ARGV[1]  txn_id                         decimal, 1..15 digits, no leading zero
-- ARGV[2]  retention_s                    decimal seconds, 1 .. 10^7: how long the settled
--                                         reservation is kept (a retry with its key reads it)
--
-- Returns  {outcome}:
--   "settled"            settled now or before
--   "voided"             it was voided: nothing written (a caller that saw it applied
--                        cannot get this: the fence orders them)
--   "gone"               no such reservation (nothing written)
--   "invalid_argument"   KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: id kind ("transfer_settled") from amount.

-- @include bucket
-- @include validate

local txn_id, retention_arg = ARGV[1], ARGV[2]
if #KEYS ~= 4 or #ARGV ~= 2 or not valid_id(txn_id)
  or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[1] ~= bucket_key("txn:stream") or KEYS[2] ~= bucket_member_key("outbound", txn_id)
  or KEYS[3] ~= bucket_key("outbound:due") or KEYS[4] ~= bucket_key("transit") then
  return {"invalid_argument"}
end

local record = redis.call("HMGET", KEYS[2], "state", "amount", "from")
if not record[1] then
  return {"gone"}
end
if record[1] ~= "reserved" then
  return {record[1]}
end
local in_transit = tonumber(redis.call("GET", KEYS[4]) or "0")
assert(in_transit >= tonumber(record[2]), "invariant: a reservation is counted in transit")
redis.call("DECRBY", KEYS[4], record[2])
redis.call("HSET", KEYS[2], "state", "settled")
redis.call("EXPIRE", KEYS[2], retention_arg)
redis.call("ZREM", KEYS[3], txn_id)
redis.call("XADD", KEYS[1], "*",
  "id", txn_id, "kind", "transfer_settled", "from", record[3], "amount", record[2])
return {"settled"}
