-- restore_credit: put back the record of a credit of a transfer across buckets that the
-- ledger holds (a transfer_in record) while its reservation has no end, after Redis lost its
-- data (`wallet rebuild`): inbound:{b}:<to>:<token> applied, as transfer_credit.lua leaves
-- it, under the token of the reservation put back (restore_reservation.lua). Recovery then
-- finds the credit applied and settles the reservation; without this record it would void
-- it, and the payee, whose balance comes back with the credit, would keep the money too.
-- Written before the reservation, so that its end never finds the reservation without it.
-- The token is new (rebuild draws one for each reservation it puts back).
--
-- KEYS[1]  inbound:{b}:<to_user_id>:<token>  hash: state amount txn_id created_at_us
--                                             (replaced)
-- ARGV[1]  to_user_id                decimal, 1..15 digits
-- ARGV[2]  token                     16..64 of A-Z a-z 0-9 _ -
-- ARGV[3]  txn_id                    decimal, 1..15 digits
-- ARGV[4]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[5]  credited_at_us            decimal microseconds, 1..16 digits
-- ARGV[6]  retention_s               decimal seconds, 1 .. 10^7: kept as long as an ended one
--
-- Returns  {outcome}:
--   "restored"          written
--   "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate

local to_id, token, txn_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local credited_arg, retention_arg = ARGV[5], ARGV[6]
local MAX_US = 9999999999999999

if #KEYS ~= 1 or #ARGV ~= 6 or not valid_id(to_id) or not valid_request_token(token)
  or not valid_id(txn_id) or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or not valid_positive(credited_arg, MAX_US) or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[1] ~= bucket_member_key("inbound", to_id) .. ":" .. token then
  return {"invalid_argument"}
end

redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "state", "applied", "amount", amount_arg, "txn_id", txn_id,
  "created_at_us", credited_arg)
redis.call("EXPIRE", KEYS[1], retention_arg)
return {"restored"}
