-- restore_lost_reservation: `wallet rebuild` of a transfer across buckets whose credit the
-- ledger holds but whose reservation it lacks (docs/scaling.md): a loss of Redis's data took
-- the reservation before the payer's bucket's writer stored it, while the payee's bucket's
-- writer had stored the credit. Without the reservation the credit is money created, so the
-- payer is debited again, into transit:{b}, by a reservation of the same id, recorded anew
-- (a transfer_out record, stamped now), which rebuild then settles: its credit's record is
-- applied (restore_credit.lua writes it first). The payer's available money (balance less
-- held, as transfer.lua spends) is checked by rebuild before it writes anything, and here
-- again: a payer who cannot pay is answered, not forced. A record of the same id is
-- replaced: for a rebuild, the ledger says what is reserved.
--
-- KEYS[1]  txn:stream:{b}                 stream
-- KEYS[2]  outbound:{b}:<txn_id>          hash: the reservation (replaced)
-- KEYS[3]  outbound:due:{b}               sorted set: member txn_id, score due_us
-- KEYS[4]  transit:{b}                    string: kopecks in flight (raised)
-- KEYS[5]  user:{b}:<from_user_id>        hash: balance_kopecks (lowered), held_kopecks
-- KEYS[6]  txn:clock:{b}                  string: the bucket's last stamp, microseconds
-- KEYS[7]  req:{b}:<from_user_id>:<token>  hash: the record of a request that reserved, kept
--                                         open (as lua/restore_reservation.lua writes it)
-- ARGV[1]  txn_id                         decimal, 1..15 digits: the credit's
-- ARGV[2]  from_user_id                   decimal, 1..15 digits (the payer)
-- ARGV[3]  to_user_id                     decimal, 1..15 digits, <> from (the payee)
-- ARGV[4]  amount_kopecks                 decimal, 1 .. 10^12
-- ARGV[5]  token                          16..64 of A-Z a-z 0-9 _ -: names the credit's
--                                         record
-- ARGV[6]  due_us                         decimal microseconds, 1..16 digits
-- ARGV[7]  refund_of                      decimal: the transfer the credit's refund refunds,
--                                         or "" (its refunded total rebuild restored with
--                                         this reservation counted)
-- ARGV[8]  hold_id                        decimal: the hold a capture's credit names (its
--                                         reservation names it again, and the writer stores
--                                         the hold's captured event from it), or ""
--
-- Returns  {outcome}:
--   "restored"            debited, recorded and due
--   "insufficient_funds"  the payer's available money is below the amount (nothing
--                         written)
--   "account_not_found"   no wallet for the payer (nothing written)
--   "invalid_argument"    KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: as lua/transfer.lua's transfer_out, with an empty idem_key, and
-- refund_of iff ARGV[7] is not "" (lua/refund.lua's), hold_id iff ARGV[8] is not "".

-- @include bucket
-- @include validate
-- @include stamp
-- @include request_outcome

local txn_id, from_id, to_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local token, due_arg, refund_of, hold_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local MAX_US = 9999999999999999

if #KEYS ~= 7 or #ARGV ~= 8 or not (hold_id == "" or (valid_id(hold_id) and refund_of == ""))
  or not valid_id(txn_id) or not valid_id(from_id)
  or not valid_id(to_id) or from_id == to_id
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS) or not valid_request_token(token)
  or not valid_positive(due_arg, MAX_US) or not (refund_of == "" or valid_id(refund_of))
  or KEYS[1] ~= bucket_key("txn:stream") or KEYS[2] ~= bucket_member_key("outbound", txn_id)
  or KEYS[3] ~= bucket_key("outbound:due") or KEYS[4] ~= bucket_key("transit")
  or KEYS[5] ~= bucket_member_key("user", from_id) or KEYS[6] ~= bucket_key("txn:clock")
  or KEYS[7] ~= bucket_member_key("req", from_id) .. ":" .. token then
  return {"invalid_argument"}
end
local payer = redis.call("HMGET", KEYS[5], "balance_kopecks", "held_kopecks")
if not payer[1] then
  return {"account_not_found"}
end
if tonumber(payer[1]) - tonumber(payer[2] or "0") < tonumber(amount_arg) then
  return {"insufficient_funds"}
end

local stamp = string.format("%d", stamp_past_clock(KEYS[6], redis.call("TIME")))
redis.call("SET", KEYS[6], stamp)
local new_from = string.format("%d",
  redis.call("HINCRBY", KEYS[5], "balance_kopecks", "-" .. amount_arg))
redis.call("INCRBY", KEYS[4], amount_arg)
redis.call("DEL", KEYS[2])
redis.call("HSET", KEYS[2], "state", "reserved", "from", from_id, "to", to_id,
  "amount", amount_arg, "token", token, "created_at_us", stamp, "from_balance", new_from,
  "idem_key", "", "request", token)
redis.call("ZADD", KEYS[3], due_arg, txn_id)
redis.call("DEL", KEYS[7])
record_request_outcome(KEYS[7], 1, {"ok", txn_id, stamp, "0"})
keep_request_open(KEYS[7], 1)
local entry = {"id", txn_id, "kind", "transfer_out", "from", from_id, "to", to_id,
  "amount", amount_arg, "created_at_us", stamp, "from_balance", new_from, "idem_key", ""}
if refund_of ~= "" then
  redis.call("HSET", KEYS[2], "refund_of", refund_of)
  entry[#entry + 1], entry[#entry + 2] = "refund_of", refund_of
end
if hold_id ~= "" then
  redis.call("HSET", KEYS[2], "hold_id", hold_id)
  entry[#entry + 1], entry[#entry + 2] = "hold_id", hold_id
end
redis.call("XADD", KEYS[1], "*", unpack(entry))
return {"restored"}
