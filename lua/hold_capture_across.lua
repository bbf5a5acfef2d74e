-- hold_capture_across: a payee of another bucket captures all or part of a pending hold,
-- on the hold's (its payer's) bucket, in one atomic step (docs/scaling.md, "Holds across
-- buckets"): the hold's checks by this bucket's clock, the hold marked captured, the payer's
-- balance lowered by the captured amount and held_kopecks by the hold's, and the captured
-- amount reserved as a transfer across buckets is (lua/transfer.lua): into transit:{b}, the
-- reservation outbound:{b}:<txn_id> under the token of the hold's expectation on the payee's
-- bucket, which its credit applies (at most the hold's amount: the rest of the headroom goes
-- back there), and a transfer_out record with hold_id. The payee's session and
-- Idempotency-Key are not here: lua/claim_key.lua checked and claimed them on the payee's
-- bucket first, and this request's outcome is recorded under its token (refusals too, so
-- that the claim can be completed with them after a crash), in the payer's name: the token
-- is the request's alone, and the record is in this bucket.
--
-- KEYS[1]  txn:seq:{b}                  string: last id issued (holds and transactions)
-- KEYS[2]  txn:stream:{b}               stream
-- KEYS[3]  user:{b}:<payer_id>          hash: the payer's wallet (balance and held lowered)
-- KEYS[4]  req:{b}:<payer_id>:<token>   hash: outcome txn_id created_at_us (request_outcome),
--                                       kept open while the reservation is
-- KEYS[5]  hold:{b}:<hold_id>           hash: the hold (captured)
-- KEYS[6]  holds:due:{b}                sorted set: member <hold_id>:<from>:<to>:<amount>
-- KEYS[7]  holds:{b}:<payer_id>         sorted set: the payer's holds
-- KEYS[8]  transit:{b}                  string: kopecks reserved here for credits elsewhere
-- KEYS[9]  outbound:due:{b}             sorted set: member txn_id, score the deadline
-- KEYS[10] txn:clock:{b}                string: the bucket's last stamp, microseconds
-- ARGV[1]  payer_id                     the hold's from as read before the call
-- ARGV[2]  user_id                      the acting user (the hold's payee, of another bucket)
-- ARGV[3]  hold_id                      decimal, 1..15 digits
-- ARGV[4]  amount_kopecks               decimal, 1 .. 10^12, or "" for the whole hold
-- ARGV[5]  request token                16..64 of A-Z a-z 0-9 _ -: the claim's
-- ARGV[6]  outcome ttl_s                decimal seconds, 1 .. 10^7
-- ARGV[7]  deadline_ms                  decimal, 1 .. 10^7: from now, when recovery may
--                                       complete the reservation
-- ARGV[8]  idempotency key              the payee's, or "": claimed on the payee's bucket,
--                                       not checked here; refusals are recorded under the
--                                       token only with one (for the claim; without, nothing
--                                       is written for a refusal, as in one bucket), and the
--                                       stream record carries it, for the ledger (`wallet
--                                       rebuild` restores it under the payee)
--
-- Returns  {outcome, txn_id, created_at_us, from, amount, replayed}, all strings (from: the
-- payer; amount: the amount captured):
--   outcome "ok"                      captured and reserved (replayed "0")
--   outcome "not_applied"             the token already has a record: that record is
--                                     answered as {outcome, txn_id, created_at_us, "0"}
--   outcome "hold_not_found"          the hold is another user's, or named with another payer
--                                     (recorded under the token with a key)
--   outcome "hold_missing"            no hold:<id> in Redis (not recorded: the API asks the
--                                     ledger, as for hold_not_found in one bucket)
--   outcome "hold_not_pending"        ended, or now >= expires_at_us (recorded under the token
--                                     with a key)
--   outcome "capture_exceeds_hold"    amount > the hold's amount (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: id kind ("transfer_out") from to amount created_at_us from_balance
-- idem_key (the payee's: ARGV[8]) hold_id, and idem_fp iff ARGV[8] is not "". The
-- reservation's hash keeps no key (idem_key ""): a void forgets the payer's key, and this
-- one is not the payer's.

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include request_outcome
-- @include holds
-- @include hold_action

local payer_id, user_id, hold_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local token, outcome_ttl_arg, deadline_arg, idem_key = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
-- No key and no session here (checked on the payee's bucket): the frame's own checks only.
local frame = money_frame(payer_id, "", "1", "0", "1", "1", token, outcome_ttl_arg, 9)

if #ARGV ~= 8 or not frame.valid or not (idem_key == "" or valid_idempotency_key(idem_key))
  or not valid_id(user_id) or user_id == payer_id
  or not valid_id(hold_id)
  or (amount_arg ~= "" and not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS))
  or not valid_positive(deadline_arg, MAX_TTL_S)
  or KEYS[5] ~= bucket_member_key("hold", hold_id) or KEYS[6] ~= bucket_key("holds:due")
  or KEYS[7] ~= bucket_member_key("holds", payer_id) or KEYS[8] ~= bucket_key("transit")
  or KEYS[9] ~= bucket_key("outbound:due") then
  return {"invalid_argument", "", "", "", "", "0"}
end

local decided = recorded_request_outcome(KEYS[4])
if decided then
  return decided
end
local created_at_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "", "0"}
end

local hold, not_pending = pending_hold_across(KEYS[5], idem_key ~= "" and KEYS[4], user_id,
                                              payer_id, tonumber(created_at_us), outcome_ttl_arg)
if not hold then
  return not_pending
end
local captured_arg = amount_arg ~= "" and amount_arg or hold.amount_arg
local captured = tonumber(captured_arg)
if captured > hold.amount then
  return {"capture_exceeds_hold", "", "", "", "", "0"}
end
local expectation_token = redis.call("HGET", KEYS[5], "token")
local payer = wallet_amounts(KEYS[3], payer_id)
local payer_member, due_member = payer_side_members(hold_id, hold, payer_id, user_id, payer,
                                                    KEYS[7], KEYS[6])
assert(expectation_token and payer.balance - captured >= payer.held - hold.amount,
  "invariant: a capture across buckets without its expectation, or beyond the payer's held: hold "
  .. hold_id)

-- Every check has passed: from here on the script only writes.
frame_keep_stamp(frame)
redis.call("ZREM", KEYS[7], payer_member)
redis.call("ZREM", KEYS[6], due_member)
local new_from = string.format("%d", payer.balance - captured)
redis.call("HSET", KEYS[3], "balance_kopecks", new_from,
  "held_kopecks", string.format("%d", payer.held - hold.amount))
local txn_id = string.format("%d", redis.call("INCR", KEYS[1]))
redis.call("HSET", KEYS[5], "status", "captured", "captured_amount", captured_arg,
  "capture_txn_id", txn_id)
-- Kept while its capture's reservation is open: recovery reads the hold's status before it
-- ends the hold's expectation (service/redis/crossing.py), and a hash gone would read as
-- ended. The reservation's end gives it its retention (includes/reservation.lua).
redis.call("PERSIST", KEYS[5])
redis.call("INCRBY", KEYS[8], captured_arg)
redis.call("HSET", bucket_member_key("outbound", txn_id), "state", "reserved",
  "from", payer_id, "to", user_id, "amount", captured_arg, "token", expectation_token,
  "created_at_us", created_at_us, "from_balance", new_from, "idem_key", "",
  "request", token, "hold_id", hold_id)
redis.call("ZADD", KEYS[9],
  string.format("%d", frame.stamp_us + tonumber(deadline_arg) * 1000), txn_id)
local record = {"id", txn_id, "kind", "transfer_out", "from", payer_id, "to", user_id,
  "amount", captured_arg, "created_at_us", created_at_us, "from_balance", new_from,
  "idem_key", idem_key, "hold_id", hold_id}
if idem_key ~= "" then
  -- The payee's fingerprint, as lua/claim_key.lua records it: "all" or the amount.
  record[#record + 1], record[#record + 2] = "idem_fp",
    request_fingerprint("capture", hold_id, amount_arg ~= "" and amount_arg or "all")
end
redis.call("XADD", KEYS[2], "*", unpack(record))
record_request_outcome(KEYS[4], outcome_ttl_arg, {"ok", txn_id, created_at_us, "0"})
keep_request_open(KEYS[4], 1)
return {"ok", txn_id, created_at_us, payer_id, captured_arg, "0"}
