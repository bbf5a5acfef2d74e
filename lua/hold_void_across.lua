-- hold_void_across: a payee of another bucket lets a pending hold go, on the hold's (its
-- payer's) bucket, in one atomic step (docs/scaling.md, "Holds across buckets"): the payer's
-- held_kopecks loses the hold's amount, the hold leaves holds:{b}:<payer> and holds:due:{b}
-- and is marked voided, a hold_voided record is appended, and the outcome is recorded under
-- the token (refusals too), in the payer's name as lua/hold_capture_across.lua does. No money
-- moves and no id is issued. The payee's side, the hold's expectation on the payee's bucket,
-- is aborted by the caller next (lua/transfer_abort.lua; recovery does it by the hold's
-- status after a crash); the session and key were checked and claimed there before
-- (lua/claim_key.lua).
--
-- KEYS[1]  txn:seq:{b}                  string: checked as by every money script (not raised)
-- KEYS[2]  txn:stream:{b}               stream
-- KEYS[3]  user:{b}:<payer_id>          hash: the payer's wallet (held lowered)
-- KEYS[4]  req:{b}:<payer_id>:<token>   hash: outcome txn_id created_at_us (request_outcome;
--                                       txn_id is the hold id, created_at_us the void's instant)
-- KEYS[5]  hold:{b}:<hold_id>           hash: the hold (voided)
-- KEYS[6]  holds:due:{b}                sorted set: member <hold_id>:<from>:<to>:<amount>
-- KEYS[7]  holds:{b}:<payer_id>         sorted set: the payer's holds
-- KEYS[8]  txn:clock:{b}                string: the bucket's last stamp, microseconds
-- ARGV[1]  payer_id                     the hold's from as read before the call
-- ARGV[2]  user_id                      the acting user (the hold's payee, of another bucket)
-- ARGV[3]  hold_id                      decimal, 1..15 digits
-- ARGV[4]  request token                16..64 of A-Z a-z 0-9 _ -: the claim's
-- ARGV[5]  outcome ttl_s                decimal seconds, 1 .. 10^7
-- ARGV[6]  hold_retention_s             decimal seconds, 1 .. 10^7: hold:<id> lives this
--                                       long after the void
-- ARGV[7]  idempotency key              the payee's, or "": as ARGV[8] of
--                                       lua/hold_capture_across.lua
--
-- Returns  {outcome, from, amount, created_at_us, expires_at_us, replayed}, all strings, as
-- lua/hold_void.lua:
--   outcome "ok"                      voided (replayed "0")
--   outcome "not_applied"             the token already has a record: that record is
--                                     answered as {outcome, txn_id, created_at_us, "0"}
--   outcome "hold_not_found"          the hold is another user's, or named with another payer
--                                     (recorded under the token with a key)
--   outcome "hold_missing"            no hold:<id> in Redis (not recorded: the API asks the
--                                     ledger, as for hold_not_found in one bucket)
--   outcome "hold_not_pending"        ended, or now >= expires_at_us (recorded under the token
--                                     with a key)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: kind ("hold_voided") hold from to amount created_at_us (the void's
-- instant) expires_at_us idem_key (the payee's: ARGV[7]), and idem_fp iff it is not "".

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include request_outcome
-- @include holds
-- @include hold_action

local payer_id, user_id, hold_id, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local outcome_ttl_arg, retention_arg, idem_key = ARGV[5], ARGV[6], ARGV[7]
-- No key and no session here (checked on the payee's bucket): the frame's own checks only.
local frame = money_frame(payer_id, "", "1", "0", "1", "1", token, outcome_ttl_arg, 7)

if #ARGV ~= 7 or not frame.valid or not (idem_key == "" or valid_idempotency_key(idem_key)) or not valid_id(user_id) or user_id == payer_id
  or not valid_id(hold_id) or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[5] ~= bucket_member_key("hold", hold_id) or KEYS[6] ~= bucket_key("holds:due")
  or KEYS[7] ~= bucket_member_key("holds", payer_id) then
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

local hold, not_pending = pending_hold_across(KEYS[5], idem_key ~= "" and KEYS[4], user_id,
                                              payer_id, tonumber(now_us), outcome_ttl_arg)
if not hold then
  return not_pending
end
local payer = wallet_amounts(KEYS[3], payer_id)
local payer_member, due_member = payer_side_members(hold_id, hold, payer_id, user_id, payer,
                                                    KEYS[7], KEYS[6])

-- Every check has passed: from here on the script only writes.
frame_keep_stamp(frame)
redis.call("ZREM", KEYS[7], payer_member)
redis.call("ZREM", KEYS[6], due_member)
redis.call("HINCRBY", KEYS[3], "held_kopecks", "-" .. hold.amount_arg)
redis.call("HSET", KEYS[5], "status", "voided")
redis.call("EXPIRE", KEYS[5], retention_arg)
local record = {"kind", "hold_voided", "hold", hold_id, "from", payer_id, "to", user_id,
  "amount", hold.amount_arg, "created_at_us", now_us, "expires_at_us", hold.expires_at_us,
  "idem_key", idem_key}
if idem_key ~= "" then
  -- The payee's fingerprint, as lua/claim_key.lua records it, for `wallet rebuild`.
  record[#record + 1], record[#record + 2] = "idem_fp", request_fingerprint("void", hold_id)
end
redis.call("XADD", KEYS[2], "*", unpack(record))
record_request_outcome(KEYS[4], outcome_ttl_arg, {"ok", hold_id, now_us, "0"})
return {"ok", payer_id, hold.amount_arg, hold.created_at_us, hold.expires_at_us, "0"}
