-- refund: the recipient of a transfer (a capture included) sends all or part of it back
-- to its payer, in one atomic step: the refunds of one transfer never add up to more than
-- it (refunded:{b}:<refunder>:<txn_id>, which only this script raises; the void of a refund
-- across buckets that never reached its payer lowers it again, lua/transfer_void.lua), the
-- refunder spends from available (includes/holds.lua) and the payer's credit keeps within
-- the ceiling.
-- docs/holds.md gives the design; the order of the steps is transfer.lua's.
--
-- A refund of a transfer across buckets (docs/scaling.md, "Across buckets") crosses back:
-- it comes here as its reservation on the refunder's bucket, after lua/transfer_expect.lua
-- ran on the payer's under the same token for the amount the caller expected to refund
-- (ARGV[14]: the amount asked, or what was left as the caller read it) and answered what
-- it found (ARGV[13]). The checks and records are a refund's; the money goes from the
-- refunder's balance into transit:{b}, the reservation outbound:{b}:<id> names the
-- transfer refunded (refund_of), and lua/transfer_credit.lua then credits the payer. An
-- "all that is left" that has grown past the expected amount since the caller read it (a
-- refund voided meanwhile) is answered "stale", unrecorded: the caller expects again.
--
-- The transfer's facts (payer, amount) are immutable: the caller reads them from the
-- ledger merged with the unpersisted stream tail and passes them. When the caller found no
-- transfer received by the refunder, it passes "" for both and the script answers
-- transaction_not_found, recorded under the key like any other refusal, so that a key used
-- on an id that does not exist yet never later turns into a refund.
--
-- A lost reply's lookup (lookup_request.lua) answers outcome, txn_id and created_at_us
-- only: the refunded amount is also kept under the request's token, as an extra field
-- "amount" of req:{b}:<user_id>:<token> (request_outcome.lua's three fields are unchanged),
-- which the caller reads when the lookup found the refund (service/redis/refunds.py).
--
-- KEYS[1]  txn:seq:{b}                  string: last transaction id issued, within its epoch
-- KEYS[2]  txn:stream:{b}               stream: one entry per transaction
-- KEYS[3]  user:{b}:<user_id>           hash: the refunder's wallet (debited)
-- KEYS[4]  req:{b}:<user_id>:<token>    hash: outcome txn_id created_at_us (request_outcome),
--                                       and amount; across buckets kept while the
--                                       reservation is open
-- KEYS[5]  holds:{b}:<user_id>          sorted set: the refunder's holds held_kopecks counts
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  user:{b}:<payer_id>          iff ARGV[3] is not "" and ARGV[13] is ""; hash: the
--                                       transfer's payer's wallet (credited)
-- KEYS[n]  transit:{b}                  iff ARGV[13] is not ""; string: kopecks reserved here
--                                       for credits on other buckets
-- KEYS[n]  outbound:due:{b}             iff ARGV[13] is not ""; sorted set: member txn_id,
--                                       score the reservation's deadline
-- KEYS[n]  refunded:{b}:<user_id>:<txn_id> always; string: kopecks refunded so far
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<user_id>:<key>     iff ARGV[6] is not ""; hash: fingerprint
--                                       ("refund:<txn_id>:<amount or "all">") outcome
--                                       txn_id created_at_us amount
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[8] is "1"
-- ARGV[1]  user_id                      the refunder: decimal, 1..15 digits, no leading zero
-- ARGV[2]  txn_id                       the transfer to refund: decimal, 1..15 digits
-- ARGV[3]  payer_id                     the transfer's payer (decimal, <> user_id), or ""
--                                       when the caller found no transfer txn_id received by
--                                       user_id
-- ARGV[4]  transfer amount_kopecks      decimal, 1 .. 10^12; "" iff ARGV[3] is ""
-- ARGV[5]  amount_kopecks               decimal, 1 .. 10^12, or "" for all that is left
-- ARGV[6]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[7]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[8]  check session                "1": KEYS[n] must be a live session of user_id;
--                                       "0": no session (internal caller)
-- ARGV[9]  session absolute_s           decimal seconds, 1 .. 10^7: lifetime since login
-- ARGV[10] session idle_s               decimal seconds, 1 .. 10^7: the TTL it gets back
-- ARGV[11] request token                16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[12] outcome ttl_s                decimal seconds, 1 .. 10^7: how long the record under
--                                       the token is kept
-- ARGV[13] across buckets               "" when the payer is in this bucket; else what
--                                       lua/transfer_expect.lua answered on the payer's:
--                                       "expected", "recipient_not_found" or
--                                       "balance_limit_exceeded" (ARGV[3] is then not "")
-- ARGV[14] expected amount_kopecks      decimal, 1 .. 10^12, iff ARGV[13] is not "": what the
--                                       expectation kept; "" otherwise
-- ARGV[15] deadline_ms                  decimal, 1 .. 10^7, iff ARGV[13] is not "": from now,
--                                       when recovery may settle or void the reservation;
--                                       "" otherwise
--
-- Returns  {outcome, txn_id, created_at_us, amount, replayed}, all strings:
--   outcome "ok"                      money moved (or replayed: replayed = "1"); amount:
--                                     the kopecks this refund sent back
--   outcome "not_applied"             the token already has a record (a lookup found it
--                                     missing): that record is answered, nothing is done
--   outcome "transaction_not_found"   not a transfer to user_id (recorded under the key)
--   outcome "refund_exceeds_transfer" more than is left unrefunded (recorded under the key),
--                                     or nothing is left
--   outcome "insufficient_funds"      refunder's available < amount (recorded under the key)
--   outcome "balance_limit_exceeded"  the payer would pass 10^15 (recorded under the key)
--   outcome "stale"                   across buckets: all that is left is not the expected
--                                     amount, and the verdict does not cover it (more
--                                     than expected, or less with the ceiling refused):
--                                     not recorded, nothing written
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for user_id or for the payer (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
--   txn_id, created_at_us and amount are "" unless outcome is "ok".
-- Stream entry fields: id kind ("refund") from (user_id) to (payer_id) amount
-- created_at_us from_balance to_balance idem_key refund_of (txn_id), and idem_fp (the
-- fingerprint recorded under the key) iff ARGV[6] is not ""; across buckets kind
-- "transfer_out" (a reservation) and no to_balance.

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include idempotency
-- @include request_outcome
-- @include holds

local user_id, txn_id, payer_id, transfer_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local amount_arg, idem_key, ttl_arg, session_flag = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local absolute_arg, idle_arg, token, outcome_ttl_arg = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local across, expected_arg, deadline_arg = ARGV[13], ARGV[14], ARGV[15]
local found = payer_id ~= ""
local crossing = across ~= ""
-- After holds:{refunder}: the original payer's wallet, only when the transfer was found in
-- this bucket; transit and outbound:due, when the payer is in another.
local payer_index = 6
local refunded_index = crossing and 8 or (found and 7 or 6)
local frame = money_frame(user_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, refunded_index)

if #ARGV ~= 15 or not frame.valid or not valid_id(txn_id)
  or (found and (not valid_id(payer_id) or payer_id == user_id
                 or not valid_positive(transfer_arg, MAX_AMOUNT_KOPECKS)))
  or (not found and transfer_arg ~= "")
  or (amount_arg ~= "" and not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS))
  or KEYS[5] ~= bucket_member_key("holds", user_id)
  or (crossing and not (found and valid_positive(expected_arg, MAX_AMOUNT_KOPECKS)
                        and valid_positive(deadline_arg, MAX_TTL_S)
                        and KEYS[6] == bucket_key("transit")
                        and KEYS[7] == bucket_key("outbound:due")
                        and (across == "expected" or across == "recipient_not_found"
                             or across == "balance_limit_exceeded")))
  or (not crossing and (expected_arg ~= "" or deadline_arg ~= ""))
  or (found and not crossing and KEYS[payer_index] ~= bucket_member_key("user", payer_id))
  or KEYS[refunded_index] ~= bucket_member_key("refunded", user_id) .. ":" .. txn_id then
  return {"invalid_argument", "", "", "", "0"}
end

-- A lookup of this request's lost reply came first: it answered "not applied", so nothing
-- may be done now.
local decided = recorded_request_outcome(KEYS[4])
if decided then
  return {decided[1], decided[2], decided[3], redis.call("HGET", KEYS[4], "amount") or "", "0"}
end

local now_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "0"}
end

-- A retry with the key gets the recorded reply back, with the amount it refunded.
local fingerprint = request_fingerprint("refund", txn_id, amount_arg ~= "" and amount_arg or "all")
local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg, {fingerprint},
                                {"txn_id", "created_at_us", "amount"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end

local refunder = wallet_amounts(KEYS[3], user_id)
if not refunder then
  return {"account_not_found", "", "", "", "0"}
end
if not found then
  return idempotency_remember(idem, {"transaction_not_found", "", "", "", "0"})
end
-- Across buckets the payer's bucket found the wallet, or did not.
local payer = nil
if crossing then
  payer = across ~= "recipient_not_found"
else
  payer = wallet_amounts(KEYS[payer_index], payer_id)
end
if not payer then
  return {"account_not_found", "", "", "", "0"}
end

local refunded = tonumber(redis.call("GET", KEYS[refunded_index]) or "0")
local transfer_amount = tonumber(transfer_arg)
assert(refunded ~= nil and refunded >= 0 and refunded <= transfer_amount,
  "invariant: refunded out of range for transfer " .. txn_id)
local left = transfer_amount - refunded
local amount = left
if amount_arg ~= "" then
  amount = tonumber(amount_arg)
end
if left == 0 or amount > left then
  return idempotency_remember(idem, {"refund_exceeds_transfer", "", "", "", "0"})
end
-- Across buckets the payer's headroom was checked for the expected amount: more is not
-- covered, and a refusal of the ceiling for more than is refunded would be wrong.
if crossing and (amount > tonumber(expected_arg)
                 or (across == "balance_limit_exceeded" and amount < tonumber(expected_arg))) then
  return {"stale", "", "", "", "0"}
end
local due, due_sum = due_holds(KEYS[5], now_us)
if available_kopecks(refunder, due_sum) < amount then
  return idempotency_remember(idem, {"insufficient_funds", "", "", "", "0"})
end
if (crossing and across == "balance_limit_exceeded")
  or (not crossing and not credit_fits(payer, amount)) then
  return idempotency_remember(idem, {"balance_limit_exceeded", "", "", "", "0"})
end

-- Every check has passed: from here on the script only writes. Integers are
-- formatted with %d because tostring() would print 10^15 as "1e+15".
frame_keep_stamp(frame)
local amount_str = string.format("%d", amount)
release_holds(due, KEYS[5], KEYS[3], KEYS[2], user_id, now_us)
redis.call("INCRBY", KEYS[refunded_index], amount_str)
local new_from = string.format("%d",
  redis.call("HINCRBY", KEYS[3], "balance_kopecks", "-" .. amount_str))
local refund_id = string.format("%d", redis.call("INCR", KEYS[1]))
local record
if crossing then
  redis.call("INCRBY", KEYS[6], amount_str)
  redis.call("HSET", bucket_member_key("outbound", refund_id), "state", "reserved",
    "from", user_id, "to", payer_id, "amount", amount_str, "token", token,
    "created_at_us", now_us, "from_balance", new_from, "idem_key", idem_key,
    "refund_of", txn_id, "request", token)
  redis.call("ZADD", KEYS[7],
    string.format("%d", frame.stamp_us + tonumber(deadline_arg) * 1000), refund_id)
  record = {"id", refund_id, "kind", "transfer_out", "from", user_id, "to", payer_id,
    "amount", amount_str, "created_at_us", now_us, "from_balance", new_from,
    "idem_key", idem_key, "refund_of", txn_id}
else
  local new_to = redis.call("HINCRBY", KEYS[payer_index], "balance_kopecks", amount_str)
  record = {"id", refund_id, "kind", "refund", "from", user_id, "to", payer_id,
    "amount", amount_str, "created_at_us", now_us, "from_balance", new_from,
    "to_balance", string.format("%d", new_to), "idem_key", idem_key, "refund_of", txn_id}
end
if frame.has_key then
  -- "all" or the amount: the ledger's row alone cannot tell (`wallet rebuild`).
  record[#record + 1], record[#record + 2] = "idem_fp", fingerprint
end
redis.call("XADD", KEYS[2], "*", unpack(record))
local moved = {"ok", refund_id, now_us, amount_str, "0"}
record_request_outcome(KEYS[4], outcome_ttl_arg, moved)
redis.call("HSET", KEYS[4], "amount", amount_str)
if crossing then
  keep_request_open(KEYS[4], 1)
end
return idempotency_remember(idem, moved)
