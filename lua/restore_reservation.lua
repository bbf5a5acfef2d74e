-- restore_reservation: put back one reservation of a transfer across buckets that the ledger
-- says has no end (a transfer_out record and no transfer_settled or transfer_voided), after
-- Redis lost its data (`wallet rebuild`): its hash outbound:{b}:<txn_id> as transfer.lua
-- wrote it and its outbound:due:{b} member. The payer's balance comes back with the wallet
-- (restore_wallet.lua), without the money reserved; rebuild sets transit:{b} before, to
-- what the ledger's transfers half-way keep there, and ends the reservation right after
-- (service/ledger/rebuild_crossings.py): settled when the credit's record says applied
-- (written first where the ledger holds the credit: restore_credit.lua, or expected again:
-- transfer_expect.lua), else voided. A record of the same id is replaced: for a rebuild,
-- the ledger says what is reserved.
--
-- KEYS[1]  outbound:{b}:<txn_id>     hash: state from to amount token created_at_us
--                                    from_balance idem_key, refund_of iff ARGV[10] is not ""
--                                    (replaced)
-- KEYS[2]  outbound:due:{b}          sorted set: member txn_id, score due_us
-- KEYS[3]  user:{b}:<from_user_id>   hash: the payer's wallet, which must exist (read): a
--                                    reservation is in its payer's bucket
-- KEYS[4]  req:{b}:<from_user_id>:<request>  hash: the record of a request that reserved, as
--                                    includes/request_outcome.lua keeps it open (replaced):
--                                    recovery, asking it, never fences this one off
-- ARGV[1]  txn_id                    decimal, 1..15 digits
-- ARGV[2]  from_user_id              decimal, 1..15 digits (the payer)
-- ARGV[3]  to_user_id                decimal, 1..15 digits, <> from (the payee)
-- ARGV[4]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[5]  token                     16..64 of A-Z a-z 0-9 _ -: names the credit's record
-- ARGV[6]  created_at_us             decimal microseconds, 1..16 digits
-- ARGV[7]  from_balance              decimal kopecks, the payer's balance after it
-- ARGV[8]  idempotency key           "" or 1..64 printable ASCII
-- ARGV[9]  due_us                    decimal microseconds, 1..16 digits: when recovery
--                                    takes it
-- ARGV[10] refund_of                 decimal: the transfer a refund's reservation refunds
--                                    (its void lowers that refunded total), or ""
-- ARGV[11] request token             16..64 of A-Z a-z 0-9 _ -: the request it is put back
--                                    under (ARGV[5] for a transfer or a refund; for a batch's
--                                    leg another, so that it stays a leg: lua/transfer_void.lua)
-- ARGV[12] hold_id                   decimal: the hold a capture's reservation captured
--                                    (lua/hold_capture_across.lua), or ""
--
-- Returns  {outcome}:
--   "restored"            written
--   "account_not_found"   no wallet for the payer (nothing written)
--   "invalid_argument"    KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include request_outcome

local txn_id, from_id, to_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local token, created_arg, balance_arg = ARGV[5], ARGV[6], ARGV[7]
local idem_key, due_arg, refund_of, request = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local hold_id = ARGV[12]
local MAX_US = 9999999999999999

if #KEYS ~= 4 or #ARGV ~= 12 or not valid_request_token(request) or not valid_id(txn_id)
  or not valid_id(from_id) or not (hold_id == "" or (valid_id(hold_id) and refund_of == ""))
  or not valid_id(to_id) or from_id == to_id
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS) or not valid_request_token(token)
  or not valid_positive(created_arg, MAX_US) or not valid_positive(due_arg, MAX_US)
  or not (balance_arg == "0" or valid_positive(balance_arg, MAX_BALANCE_KOPECKS))
  or not (idem_key == "" or valid_idempotency_key(idem_key))
  or not (refund_of == "" or valid_id(refund_of))
  or KEYS[1] ~= bucket_member_key("outbound", txn_id) or KEYS[2] ~= bucket_key("outbound:due")
  or KEYS[3] ~= bucket_member_key("user", from_id)
  or KEYS[4] ~= bucket_member_key("req", from_id) .. ":" .. request then
  return {"invalid_argument"}
end
if redis.call("EXISTS", KEYS[3]) == 0 then
  return {"account_not_found"}
end

redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "state", "reserved", "from", from_id, "to", to_id,
  "amount", amount_arg, "token", token, "created_at_us", created_arg,
  "from_balance", balance_arg, "idem_key", idem_key, "request", request)
if refund_of ~= "" then
  redis.call("HSET", KEYS[1], "refund_of", refund_of)
end
if hold_id ~= "" then
  redis.call("HSET", KEYS[1], "hold_id", hold_id)
end
redis.call("DEL", KEYS[4])
record_request_outcome(KEYS[4], 1, {"ok", txn_id, created_arg, "0"})
keep_request_open(KEYS[4], 1)
redis.call("ZADD", KEYS[2], due_arg, txn_id)
return {"restored"}
