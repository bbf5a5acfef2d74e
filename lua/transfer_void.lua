-- transfer_void: undoes the reservation of a transfer across buckets on the payer's bucket,
-- once lua/transfer_abort.lua fenced its credit off on the payee's (docs/scaling.md,
-- "Across buckets"): the money goes back from transit:{b} to the payer's balance, the
-- reservation becomes voided, and a transfer_voided record is appended. The request that
-- made it never got its 201 (that needs the credit), so its Idempotency-Key's record goes
-- too: a retry with the key is a new transfer. Not a batch leg's (its request token is not
-- its own): the record is the whole batch's, whose other legs may stand, and a retry must
-- replay it rather than pay them again (such a void breaks the batch: only a loss of the
-- credit's record causes it, service/redis/batches.py). A refund across buckets (its reservation
-- names refund_of, lua/refund.lua) gives back what it took of the refunded total, so that
-- the undone refund no longer counts. Safe to repeat.
--
-- KEYS[1]  txn:stream:{b}                 stream
-- KEYS[2]  outbound:{b}:<txn_id>          hash: the reservation (state set to "voided")
-- KEYS[3]  outbound:due:{b}               sorted set: member txn_id
-- KEYS[4]  transit:{b}                    string: kopecks in flight (lowered)
-- KEYS[5]  user:{b}:<from_user_id>        hash: balance_kopecks (raised)
-- KEYS[6]  txn:clock:{b}                  string: the bucket's last stamp, microseconds
-- KEYS[7]  req:{b}:<from_user_id>:<request>  hash: the record of the request that made the
--                                         reservation (its `open` counted down)
-- KEYS[n]  refunded:{b}:<from_user_id>:<refund_of>  iff the reservation is a refund's
--                                         (its refund_of): string, lowered
-- KEYS[n]  idem:{b}:<from_user_id>:<key>  iff the reservation has a key (its idem_key)
-- ARGV[1]  txn_id                         decimal, 1..15 digits, no leading zero
-- ARGV[2]  retention_s                    decimal seconds, 1 .. 10^7: how long the voided
--                                         reservation is kept
-- ARGV[3]  request_ttl_s                  decimal seconds, 1 .. 10^7: how long the request's
--                                         record is kept once none of its reservations is open
--
-- Returns  {outcome}:
--   "voided"             voided now or before
--   "settled"            it was settled: nothing written (the fence orders them)
--   "gone"               no such reservation (nothing written)
--   "invalid_argument"   KEYS/ARGV fail validation, or KEYS[5..] are not the reservation's
--                        payer, request, refunded total and key (nothing written)
-- Stream entry fields: id kind ("transfer_voided") from amount created_at_us from_balance.

-- @include bucket
-- @include validate
-- @include stamp
-- @include reservation

local txn_id, retention_arg, request_ttl_arg = ARGV[1], ARGV[2], ARGV[3]
if #KEYS < 7 or #KEYS > 9 or not valid_reservation_call(txn_id, retention_arg, request_ttl_arg)
  or KEYS[6] ~= bucket_key("txn:clock") then
  return {"invalid_argument"}
end

local reservation = reservation_record(KEYS[2])
if not reservation then
  return {"gone"}
end
local from_id, idem_key = reservation.from, reservation.idem_key
local refund_of = reservation.refund_of
local expected_keys = {}
if refund_of then
  expected_keys[#expected_keys + 1] =
    bucket_member_key("refunded", from_id) .. ":" .. refund_of
end
local idem_record = idem_key ~= "" and bucket_member_key("idem", from_id) .. ":" .. idem_key or nil
expected_keys[#expected_keys + 1] = idem_record
if KEYS[5] ~= bucket_member_key("user", from_id) or KEYS[7] ~= reservation_request_key(reservation)
  or #KEYS ~= 7 + #expected_keys or KEYS[8] ~= expected_keys[1] or KEYS[9] ~= expected_keys[2] then
  return {"invalid_argument"}
end
if reservation.state ~= "reserved" then
  return {reservation.state}
end
-- Every check before the first write: a script that fails part-way keeps what it wrote.
if refund_of then
  local refunded = tonumber(redis.call("GET", KEYS[8]) or "0")
  assert(refunded >= tonumber(reservation.amount),
    "invariant: a refund's reservation is counted in its refunded total")
end
local stamp = string.format("%d", stamp_past_clock(KEYS[6], redis.call("TIME")))
end_reservation(reservation, KEYS[2], KEYS[3], KEYS[4], txn_id, "voided", retention_arg,
                KEYS[7], request_ttl_arg)
redis.call("SET", KEYS[6], stamp)
local from_balance = string.format("%d",
  redis.call("HINCRBY", KEYS[5], "balance_kopecks", reservation.amount))
if refund_of then
  redis.call("DECRBY", KEYS[8], reservation.amount)
end
-- The key's record, if it is still this transfer's (it may have expired and been used
-- again), and not a batch's.
if idem_record and reservation.request == reservation.token
  and redis.call("HGET", idem_record, "txn_id") == txn_id then
  redis.call("DEL", idem_record)
end
redis.call("XADD", KEYS[1], "*",
  "id", txn_id, "kind", "transfer_voided", "from", from_id, "amount", reservation.amount,
  "created_at_us", stamp, "from_balance", from_balance)
return {"voided"}
