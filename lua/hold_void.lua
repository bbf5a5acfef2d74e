-- hold_void: the payee (the acting user) lets a pending hold go, in one atomic step: the
-- payer's held_kopecks and the payee's incoming_kopecks lose the hold's amount, the hold
-- leaves holds:{b}:<payer> and holds:due:{b} and is marked voided, a hold_voided record is
-- appended, and the outcome is remembered under the token and the payee's key. No money
-- moves and no id is issued.
--
-- Keys and the payer as in hold_capture.lua: the caller reads from/to of hold:<id> first;
-- with hold:<id> missing it may call with no payer (ARGV[2] "") so that a retry with a key
-- gets its recorded reply after the hash is gone. The reply carries what the API renders
-- the hold with, so that a replay needs no hash.
--
-- KEYS[1]  txn:seq:{b}                  string: checked as by every money script (not raised)
-- KEYS[2]  txn:stream:{b}               stream
-- KEYS[3]  user:{b}:<user_id>           hash: the payee's (acting user's) wallet
-- KEYS[4]  req:{b}:<user_id>:<token>    hash: outcome txn_id created_at_us (request_outcome;
--                                       txn_id is the hold id, created_at_us the void's instant)
-- KEYS[5]  hold:{b}:<hold_id>           hash: the hold
-- KEYS[6]  holds:due:{b}                sorted set: member <hold_id>:<from>:<to>:<amount>
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  user:{b}:<payer_id>          iff ARGV[2] is not ""; hash: the payer's wallet
-- KEYS[n]  holds:{b}:<payer_id>         iff ARGV[2] is not ""; sorted set: the payer's holds
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<user_id>:<key>     iff ARGV[4] is not ""; hash: fingerprint
--                                       ("void:<hold_id>") outcome from amount created_at_us
--                                       expires_at_us
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[6] is "1"
-- ARGV[1]  user_id                      the acting user: decimal, 1..15 digits
-- ARGV[2]  payer_id                     the hold's from as read before the call, or ""
-- ARGV[3]  hold_id                      decimal, 1..15 digits
-- ARGV[4]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[5]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[6]  check session                "1" or "0"
-- ARGV[7]  session absolute_s           decimal seconds, 1 .. 10^7
-- ARGV[8]  session idle_s               decimal seconds, 1 .. 10^7
-- ARGV[9]  request token                16..64 of A-Z a-z 0-9 _ -
-- ARGV[10] outcome ttl_s                decimal seconds, 1 .. 10^7
-- ARGV[11] hold_retention_s             decimal seconds, 1 .. 10^7: hold:<id> lives this
--                                       long after the void
--
-- Returns  {outcome, from, amount, created_at_us, expires_at_us, replayed}, all strings: the
-- hold's payer, amount, creation and expiry:
--   outcome "ok"                      voided (or replayed: replayed = "1")
--   outcome "not_applied"             the token already has a record: that record is
--                                     answered as {outcome, txn_id, created_at_us, "0"}
--   outcome "hold_not_found"          not the acting user's to void (recorded under the key):
--                                     the acting user is not its payee, or the payer named is
--                                     not its payer. A hold:<id> missing from Redis (or no
--                                     payer named) answers the same, but is not recorded.
--   outcome "hold_not_pending"        ended, or now >= expires_at_us (recorded under the key)
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: kind ("hold_voided") hold from to amount created_at_us (the void's
-- instant) expires_at_us idem_key, and idem_fp (the fingerprint recorded under the key)
-- iff ARGV[4] is not "".

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include idempotency
-- @include request_outcome
-- @include holds
-- @include hold_action

local user_id, payer_id, hold_id, idem_key = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl_arg, session_flag, absolute_arg, idle_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local token, outcome_ttl_arg, retention_arg = ARGV[9], ARGV[10], ARGV[11]
local payer_known = payer_id ~= ""
-- The payer's wallet and holds follow holds:due:{b}, only when the payer is known.
local payer_index = 7
local frame = money_frame(user_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, payer_known and 8 or 6)

if #ARGV ~= 11 or not frame.valid or (payer_known and not valid_id(payer_id))
  or not valid_id(hold_id)
  or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[5] ~= bucket_member_key("hold", hold_id) or KEYS[6] ~= bucket_key("holds:due")
  or (payer_known and (KEYS[payer_index] ~= bucket_member_key("user", payer_id)
                       or KEYS[payer_index + 1] ~= bucket_member_key("holds", payer_id))) then
  return {"invalid_argument", "", "", "", "", "0"}
end

local decided = recorded_request_outcome(KEYS[4])
if decided then
  return decided
end

local now_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "", "0"}
end

local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg,
  {request_fingerprint("void", hold_id)},
  {"from", "amount", "created_at_us", "expires_at_us"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end

local payee = wallet_amounts(KEYS[3], user_id)
if not payee then
  return {"account_not_found", "", "", "", "", "0"}
end
local hold, refused, recorded = pending_hold_of_payee(KEYS[5], user_id, payer_id,
                                                      tonumber(now_us))
if not hold then
  local reply = {refused, "", "", "", "", "0"}
  return recorded and idempotency_remember(idem, reply) or reply
end
local amount_arg = hold.amount_arg
local payer = wallet_amounts(KEYS[payer_index], payer_id)
local payer_member, due_member = counted_hold_members(hold_id, hold, payer_id, user_id, payer,
                                                      payee, KEYS[payer_index + 1], KEYS[6])

-- Every check has passed: from here on the script only writes.
frame_keep_stamp(frame)
redis.call("ZREM", KEYS[payer_index + 1], payer_member)
redis.call("ZREM", KEYS[6], due_member)
redis.call("HINCRBY", KEYS[payer_index], "held_kopecks", "-" .. amount_arg)
redis.call("HINCRBY", KEYS[3], "incoming_kopecks", "-" .. amount_arg)
redis.call("HSET", KEYS[5], "status", "voided")
redis.call("EXPIRE", KEYS[5], retention_arg)
local record = {"kind", "hold_voided", "hold", hold_id, "from", payer_id, "to", user_id,
  "amount", amount_arg, "created_at_us", now_us, "expires_at_us", hold.expires_at_us, "idem_key", idem_key}
if frame.has_key then
  -- What idempotency_remember records below, for `wallet rebuild` (docs/holds.md).
  record[#record + 1], record[#record + 2] = "idem_fp", idem.fingerprints[1]
end
redis.call("XADD", KEYS[2], "*", unpack(record))
record_request_outcome(KEYS[4], outcome_ttl_arg, {"ok", hold_id, now_us, "0"})
return idempotency_remember(idem,
  {"ok", payer_id, amount_arg, hold.created_at_us, hold.expires_at_us, "0"})
