-- transfer_settle: the last step of a transfer across buckets, on the payer's bucket, once
-- lua/transfer_credit.lua applied it on the payee's (docs/scaling.md, "Across buckets"):
-- the reservation becomes settled, its money leaves transit:{b} (it is in the payee's
-- balance now), and a transfer_settled record is appended. Safe to repeat.
--
-- KEYS[1]  txn:stream:{b}                 stream
-- KEYS[2]  outbound:{b}:<txn_id>          hash: the reservation (state set to "settled")
-- KEYS[3]  outbound:due:{b}               sorted set: member txn_id
-- KEYS[4]  transit:{b}                    string: kopecks in flight (lowered)
-- KEYS[5]  req:{b}:<from_user_id>:<request>  hash: the record of the request that made the
--                                         reservation (its `open` counted down)
-- ARGV[1]  txn_id                         decimal, 1..15 digits, no leading zero
-- ARGV[2]  retention_s                    decimal seconds, 1 .. 10^7: how long the settled
--                                         reservation is kept (a retry with its key reads it)
-- ARGV[3]  request_ttl_s                  decimal seconds, 1 .. 10^7: how long the request's
--                                         record is kept once none of its reservations is open
--
-- Returns  {outcome}:
--   "settled"            settled now or before
--   "voided"             it was voided: nothing written (a caller that saw it applied
--                        cannot get this: the fence orders them)
--   "gone"               no such reservation (nothing written)
--   "invalid_argument"   KEYS/ARGV fail validation, or KEYS[5] is not the request's record
--                        (nothing written)
-- Stream entry fields: id kind ("transfer_settled") from amount.

-- @include bucket
-- @include validate
-- @include reservation

local txn_id, retention_arg, request_ttl_arg = ARGV[1], ARGV[2], ARGV[3]
if #KEYS ~= 5 or not valid_reservation_call(txn_id, retention_arg, request_ttl_arg) then
  return {"invalid_argument"}
end

local reservation = reservation_record(KEYS[2])
if not reservation then
  return {"gone"}
end
if KEYS[5] ~= reservation_request_key(reservation) then
  return {"invalid_argument"}
end
if reservation.state ~= "reserved" then
  return {reservation.state}
end
end_reservation(reservation, KEYS[2], KEYS[3], KEYS[4], txn_id, "settled", retention_arg,
                KEYS[5], request_ttl_arg)
redis.call("XADD", KEYS[1], "*",
  "id", txn_id, "kind", "transfer_settled", "from", reservation.from,
  "amount", reservation.amount)
return {"settled"}
