-- restore_hold: put back one hold that the ledger says is pending (a hold_created record
-- and no end: no capture, void or expiry), after Redis lost its data (`wallet rebuild`):
-- its hash hold:<id> and its holds:due:{b} member, exactly as hold_create.lua wrote them
-- (docs/holds.md). The payer's side (holds:{b}:<payer>, held_kopecks) and both parties'
-- amounts come back with their wallets (restore_wallet.lua), which `wallet rebuild` restores
-- first: so the sweeper never finds a due hold whose payee's incoming_kopecks does not count
-- it.
--
-- A hold already past its expiry is put back pending like any other: it is expired all the
-- same (every reader and script compares expires_at_us with the time), and a spending
-- script or the sweeper releases it as usual, with its hold_expired record. Its hash
-- expires at expires_at + hold_retention_s, as hold_create.lua set it: at once, if that has
-- passed (holds:due:{b} keeps the member, from which the sweeper settles the hold).
--
-- A hold whose payee is in another bucket (docs/scaling.md, "Holds across buckets") comes
-- back with the token of its expectation, which `wallet rebuild` makes again on the payee's
-- bucket right after (lua/transfer_expect.lua), and with the record under that token that
-- recovery finds the hold by, as hold_create.lua wrote them.
--
-- KEYS[1]  hold:{b}:<hold_id>        hash: from to amount status captured_amount
--                                    created_at_us expires_at_us capture_txn_id (overwritten)
-- KEYS[2]  holds:due:{b}             sorted set: member <hold_id>:<from>:<to>:<amount>,
--                                    score expires_at_us
-- ARGV[1]  hold_id                   decimal, 1..15 digits
-- ARGV[2]  from_user_id              decimal, 1..15 digits (the payer)
-- ARGV[3]  to_user_id                decimal, 1..15 digits, <> from (the payee)
-- ARGV[4]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[5]  created_at_us             decimal microseconds, 1..16 digits
-- ARGV[6]  expires_at_us             decimal microseconds, 1..16 digits, > created_at_us
-- KEYS[3]  req:{b}:<from>:<token>    iff ARGV[8] is not "": hash: outcome txn_id
--                                    created_at_us (includes/request_outcome.lua)
-- ARGV[7]  hold_retention_s          decimal seconds, 1 .. 10^7
-- ARGV[8]  token                     "" within one bucket; across buckets, the token of the
--                                    hold's expectation (16..64 of A-Z a-z 0-9 _ -)
--
-- Returns  {outcome}:
--   outcome "restored"          written
--   outcome "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate

local hold_id, from_id, to_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local created_arg, expires_arg, retention_arg, token = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local MAX_US = 9999999999999999

if #KEYS ~= (token == "" and 2 or 3) or #ARGV ~= 8
  or (token ~= "" and (not valid_request_token(token)
                       or KEYS[3] ~= bucket_member_key("req", from_id) .. ":" .. token)) or not valid_id(hold_id) or not valid_id(from_id)
  or not valid_id(to_id) or from_id == to_id
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or not valid_positive(created_arg, MAX_US) or not valid_positive(expires_arg, MAX_US)
  or tonumber(expires_arg) <= tonumber(created_arg)
  or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[1] ~= bucket_member_key("hold", hold_id) or KEYS[2] ~= bucket_key("holds:due") then
  return {"invalid_argument"}
end

redis.call("DEL", KEYS[1])
redis.call("HSET", KEYS[1], "from", from_id, "to", to_id, "amount", amount_arg,
  "status", "pending", "captured_amount", "0", "created_at_us", created_arg,
  "expires_at_us", expires_arg, "capture_txn_id", "")
local gone_at_ms = string.format("%d",
  math.floor(tonumber(expires_arg) / 1000) + tonumber(retention_arg) * 1000)
redis.call("PEXPIREAT", KEYS[1], gone_at_ms)
if token ~= "" then
  redis.call("HSET", KEYS[1], "token", token)
  redis.call("HSET", KEYS[3], "outcome", "ok", "txn_id", hold_id, "created_at_us", created_arg)
  redis.call("PEXPIREAT", KEYS[3], gone_at_ms)
end
redis.call("ZADD", KEYS[2], expires_arg, hold_id .. ":" .. from_id .. ":" .. to_id .. ":" .. amount_arg)
return {"restored"}
