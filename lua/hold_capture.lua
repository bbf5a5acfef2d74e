-- hold_capture: the payee (the acting user) takes all or part of a pending hold, in one
-- atomic step: the payer's balance loses the captured amount and held_kopecks the hold's
-- amount, the payee's incoming_kopecks loses the hold's amount and the balance gains the
-- captured amount (the rest returns to the payer's available balance), the hold is marked
-- captured, one transfer record with hold_id is appended (the capture's event is this
-- transaction), and the outcome is remembered under the token and the payee's key.
--
-- The caller reads from/to of hold:<id> first (immutable) to name the payer's keys; the
-- script checks them against the hold. When hold:<id> is missing the caller may still call,
-- with no payer (ARGV[2] ""), so that a retry with a key gets its recorded reply after the
-- hash is gone; such a call otherwise answers hold_not_found unrecorded (the API then asks
-- the ledger, whose answer is not this script's to record).
--
-- The payee's credit cannot be refused: hold_create.lua reserved it in incoming_kopecks.
--
-- KEYS[1]  txn:seq:{b}                  string: last id issued (holds and transactions)
-- KEYS[2]  txn:stream:{b}               stream
-- KEYS[3]  user:{b}:<user_id>           hash: the payee's (acting user's) wallet
-- KEYS[4]  req:{b}:<user_id>:<token>    hash: outcome txn_id created_at_us (request_outcome)
-- KEYS[5]  hold:{b}:<hold_id>           hash: from to amount status captured_amount
--                                       created_at_us expires_at_us capture_txn_id
-- KEYS[6]  holds:due:{b}                sorted set: member <hold_id>:<from>:<to>:<amount>
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  user:{b}:<payer_id>          iff ARGV[2] is not ""; hash: the payer's wallet
-- KEYS[n]  holds:{b}:<payer_id>         iff ARGV[2] is not ""; sorted set: the payer's holds
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<user_id>:<key>     iff ARGV[5] is not ""; hash: fingerprint
--                                       ("capture:<hold_id>:<amount or all>") outcome txn_id
--                                       created_at_us from amount
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[7] is "1"
-- ARGV[1]  user_id                      the acting user: decimal, 1..15 digits
-- ARGV[2]  payer_id                     the hold's from as read before the call, or ""
-- ARGV[3]  hold_id                      decimal, 1..15 digits
-- ARGV[4]  amount_kopecks               decimal, 1 .. 10^12, or "" for the whole hold
-- ARGV[5]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[6]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[7]  check session                "1" or "0"
-- ARGV[8]  session absolute_s           decimal seconds, 1 .. 10^7
-- ARGV[9]  session idle_s               decimal seconds, 1 .. 10^7
-- ARGV[10] request token                16..64 of A-Z a-z 0-9 _ -
-- ARGV[11] outcome ttl_s                decimal seconds, 1 .. 10^7
-- ARGV[12] hold_retention_s             decimal seconds, 1 .. 10^7: hold:<id> lives this
--                                       long after the capture
--
-- Returns  {outcome, txn_id, created_at_us, from, amount, replayed}, all strings (from: the
-- payer; amount: the amount captured):
--   outcome "ok"                      captured (or replayed: replayed = "1")
--   outcome "not_applied"             the token already has a record: that record is
--                                     answered as {outcome, txn_id, created_at_us, "0"}
--   outcome "hold_not_found"          not the acting user's to capture (recorded under the key):
--                                     the acting user is not its payee, or the payer named is
--                                     not its payer. A hold:<id> missing from Redis (or no
--                                     payer named) answers the same, but is not recorded.
--   outcome "hold_not_pending"        ended, or now >= expires_at_us (recorded under the key)
--   outcome "capture_exceeds_hold"    amount > the hold's amount (not recorded)
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
-- Stream entry fields: id kind ("transfer") from to amount created_at_us from_balance
-- to_balance idem_key hold_id, and idem_fp (the fingerprint recorded under the key) iff
-- ARGV[5] is not "".

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

local user_id, payer_id, hold_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_key, ttl_arg, session_flag, absolute_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idle_arg, token, outcome_ttl_arg, retention_arg = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local payer_known = payer_id ~= ""
-- The payer's wallet and holds follow holds:due:{b}, only when the payer is known.
local payer_index = 7
local frame = money_frame(user_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, payer_known and 8 or 6)

if #ARGV ~= 12 or not frame.valid or (payer_known and not valid_id(payer_id))
  or not valid_id(hold_id)
  or (amount_arg ~= "" and not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS))
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

local created_at_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "", "0"}
end

local fingerprint =
  request_fingerprint("capture", hold_id, amount_arg ~= "" and amount_arg or "all")
local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg, {fingerprint},
  {"txn_id", "created_at_us", "from", "amount"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end

local payee = wallet_amounts(KEYS[3], user_id)
if not payee then
  return {"account_not_found", "", "", "", "", "0"}
end
local hold, refused, recorded = pending_hold_of_payee(KEYS[5], user_id, payer_id,
                                                      tonumber(created_at_us))
if not hold then
  local reply = {refused, "", "", "", "", "0"}
  return recorded and idempotency_remember(idem, reply) or reply
end
local hold_amount_arg, hold_amount = hold.amount_arg, hold.amount
local captured_arg = amount_arg ~= "" and amount_arg or hold_amount_arg
local captured = tonumber(captured_arg)
if captured > hold_amount then
  return {"capture_exceeds_hold", "", "", "", "", "0"}
end
local payer = wallet_amounts(KEYS[payer_index], payer_id)
local payer_member, due_member = counted_hold_members(hold_id, hold, payer_id, user_id, payer,
                                                      payee, KEYS[payer_index + 1], KEYS[6])
-- What the writes below leave: the payer keeps balance >= held >= 0; the payee stays within
-- the ceiling, which hold_create.lua checked with this hold counted in incoming_kopecks.
assert(payer.balance - captured >= payer.held - hold_amount
  and payee.balance + captured + payee.incoming - hold_amount <= MAX_BALANCE_KOPECKS,
  "invariant: a capture would break the payer's held or the payee's ceiling: hold " .. hold_id)

-- Every check has passed: from here on the script only writes.
frame_keep_stamp(frame)
redis.call("ZREM", KEYS[payer_index + 1], payer_member)
redis.call("ZREM", KEYS[6], due_member)
-- Each wallet's two amounts in one HSET, computed from what was read above in this same
-- atomic step: what two HINCRBYs each left before, with two commands fewer
-- (docs/performance.md, "Time inside Redis"). Integers are formatted with %d because
-- tostring() would print 10^15 as "1e+15".
local new_from = string.format("%d", payer.balance - captured)
local new_to = string.format("%d", payee.balance + captured)
redis.call("HSET", KEYS[payer_index], "balance_kopecks", new_from,
  "held_kopecks", string.format("%d", payer.held - hold_amount))
redis.call("HSET", KEYS[3], "balance_kopecks", new_to,
  "incoming_kopecks", string.format("%d", payee.incoming - hold_amount))
local txn_id = string.format("%d", redis.call("INCR", KEYS[1]))
redis.call("HSET", KEYS[5], "status", "captured", "captured_amount", captured_arg,
  "capture_txn_id", txn_id)
redis.call("EXPIRE", KEYS[5], retention_arg)
local record = {"id", txn_id, "kind", "transfer", "from", payer_id, "to", user_id,
  "amount", captured_arg, "created_at_us", created_at_us,
  "from_balance", new_from, "to_balance", new_to,
  "idem_key", idem_key, "hold_id", hold_id}
if frame.has_key then
  -- "all" or the amount: the ledger's row alone cannot tell (`wallet rebuild`).
  record[#record + 1], record[#record + 2] = "idem_fp", fingerprint
end
redis.call("XADD", KEYS[2], "*", unpack(record))
record_request_outcome(KEYS[4], outcome_ttl_arg, {"ok", txn_id, created_at_us, "0"})
return idempotency_remember(idem, {"ok", txn_id, created_at_us, payer_id, captured_arg, "0"})
