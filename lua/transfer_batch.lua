-- transfer_batch: move money from one payer to 1..100 recipients, all or nothing, in one
-- atomic step: every leg is checked first, in the order given, and only when all of them
-- pass are the balances changed, one transaction id per leg taken (consecutive, one
-- INCRBY) and one transfer record per leg appended to the stream. A refused batch writes
-- nothing but its recorded refusal. docs/holds.md gives the design; the order of the steps
-- is transfer.lua's.
--
-- The payer spends from available = balance - held, where holds that have expired keep
-- nothing (includes/holds.lua): they are released, with their stream records, only once
-- every check has passed. Every credit keeps balance + incoming + credits <= 10^15,
-- counting all the legs to the same recipient.
--
-- A leg to a user of another bucket (docs/scaling.md, "Across buckets") comes here as its
-- reservation, after lua/transfer_expect.lua ran on the recipient's bucket under the leg's
-- token (the request's token, "-" and the leg's index from 0) and answered what it found
-- (the leg's verdict): its checks take the verdict for the recipient's wallet and ceiling,
-- its money goes into transit:{b}, and its reservation outbound:{b}:<id> waits in
-- outbound:due:{b} for the credit (service/redis/crossing.py), as a transfer's does. The
-- caller asks one recipient's legs in order and stops at its first refusal, so a leg not
-- asked ("unasked") comes after one of the same recipient that this script refuses; one it
-- reaches is a caller's bug.
--
-- KEYS[1]  txn:seq:{b}                  string: last transaction id issued, within its epoch
-- KEYS[2]  txn:stream:{b}               stream: one entry per transaction
-- KEYS[3]  user:{b}:<from_user_id>      hash: balance_kopecks held_kopecks (debited)
-- KEYS[4]  req:{b}:<from_user_id>:<token> hash: outcome txn_id created_at_us (request_outcome;
--                                       kept while a leg across buckets is open)
-- KEYS[5]  holds:{b}:<from_user_id>     sorted set: the payer's holds held_kopecks counts
-- KEYS[6]  throttle:recipient-misses:{b}:<from_user_id>
--                                       string, TTL: recipient_not_found answers counted
--                                       (includes/recipient_misses.lua)
-- KEYS[7..6+r] user:{b}:<to_user_id>    one per distinct recipient id of the legs within
--                                       this bucket (verdict ""), in the order of its first
--                                       leg, the payer's own id left out; hash:
--                                       balance_kopecks incoming_kopecks
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  transit:{b}                  iff a leg crosses buckets; string: kopecks reserved
--                                       here for credits on other buckets
-- KEYS[n]  outbound:due:{b}             iff a leg crosses buckets; sorted set: member txn_id,
--                                       score the reservation's deadline
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<from_user_id>:<key>  iff ARGV[2] is not ""; hash: fingerprint
--                                       ("batch:<sha1 hex of the legs>", below) outcome
--                                       txn_id created_at_us leg
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[4] is "1"
-- ARGV[1]  from_user_id                 decimal, 1..15 digits, no leading zero
-- ARGV[2]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[3]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[4]  check session                "1": KEYS[n] must be a live session of
--                                       from_user_id; "0": no session (internal caller)
-- ARGV[5]  session absolute_s           decimal seconds, 1 .. 10^7: lifetime since login
-- ARGV[6]  session idle_s               decimal seconds, 1 .. 10^7: the TTL it gets back
-- ARGV[7]  request token                16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[8]  outcome ttl_s                decimal seconds, 1 .. 10^7: how long the record under
--                                       the token is kept
-- ARGV[9]  recipient misses limit       decimal, 1 .. 10^9: per window, then refused
-- ARGV[10] recipient misses window_ms   decimal, 1 .. 10^12
-- ARGV[11] leg count n                  decimal, 1 .. 100
-- ARGV[12] deadline_ms                  decimal, 1 .. 10^7, iff a leg crosses buckets: from
--                                       now, when recovery may end its reservation; ""
--                                       otherwise
-- ARGV[13..12+4n] the legs, four each: to_user_id (decimal, 1..15 digits; "" when the leg
--                                       named a username that resolved to no one),
--                                       to_username (as the request named it, 3..32 of
--                                       A-Z a-z 0-9 _ . -, or "" when it named an id;
--                                       required when to_user_id is ""), amount_kopecks
--                                       (decimal, 1 .. 10^12), and the verdict: "" for a
--                                       leg within this bucket (or to no one), else
--                                       "expected", "recipient_not_found",
--                                       "balance_limit_exceeded" or "unasked"
--
-- Fingerprints: "batch:" and the SHA-1 (hex) of the legs, each "<to>=<amount_kopecks>",
-- joined by ",". A refusal records them by name (<to>: "@" and the name in lower case for
-- a leg that named a username, resolved or not; the id otherwise), so that a name
-- registered later never turns a recorded refusal into a payment; a batch that moved money
-- records them by id (<to>: every leg's id), which `wallet rebuild` can compute again from
-- the ledger. A retry matches either form.
--
-- Returns  {outcome, txn_id, created_at_us, leg, replayed}, all strings:
--   outcome "ok"                      money moved (or replayed: replayed = "1"); txn_id is
--                                     the first leg's id, leg i (from 0) has txn_id + i
--   outcome "not_applied"             the token already has a record (a lookup found it
--                                     missing): that record is answered, nothing is done
--   outcome "recipient_not_found"     a leg's recipient is unknown (recorded under the key):
--                                     no wallet, or its name resolved to no one; counted in
--                                     KEYS[6] unless replayed
--   outcome "too_many_unknown_recipients"  the payer's recipient misses reached the limit
--                                     in this window (checked after a replay; not recorded);
--                                     the second field is then the ms until it ends
--   outcome "insufficient_funds"      the legs so far exceed available (recorded under the key)
--   outcome "balance_limit_exceeded"  a recipient would pass 10^15 (recorded under the key)
--   outcome "self_transfer"           a leg names the payer (not recorded)
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         the n ids would cross the end of txn:seq:{b}'s epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for from_user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation, or a leg "unasked" is
--                                     reached (nothing written)
--   txn_id and created_at_us are "" unless outcome is "ok"; leg is the index (from 0) of
--   the leg at fault for recipient_not_found, self_transfer, insufficient_funds and
--   balance_limit_exceeded, else "".
-- Stream entry fields, one entry per leg in order: id kind ("transfer") from to amount
-- created_at_us from_balance to_balance idem_key, the balances right after that leg, and
-- idem_fp (the fingerprint recorded under the key: by id) iff ARGV[2] is not ""; a leg
-- across buckets has kind "transfer_out" (its reservation), no to_balance, and leg (its
-- index from 0: what tells a batch's leg from a transfer, with or without a key).

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include idempotency
-- @include request_outcome
-- @include holds
-- @include recipient_misses

local MAX_LEGS = 100  -- service/domain/limits.py MAX_BATCH_LEGS
local FIRST_LEG_ARG = 13
local LEG_ARGS = 4
local VERDICTS = {expected = true, recipient_not_found = true, balance_limit_exceeded = true,
                  unasked = true}

local from_id, idem_key, ttl_arg, session_flag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local absolute_arg, idle_arg, token, outcome_ttl_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local misses_limit_arg, misses_window_arg, count_arg = ARGV[9], ARGV[10], ARGV[11]
local deadline_arg = ARGV[12]

local function invalid()
  return {"invalid_argument", "", "", "", "0"}
end

if #ARGV < FIRST_LEG_ARG or not valid_id(from_id) or not valid_positive(count_arg, MAX_LEGS)
  or #ARGV ~= FIRST_LEG_ARG - 1 + LEG_ARGS * tonumber(count_arg) then
  return invalid()
end

-- The legs, and the distinct recipients within this bucket whose wallets follow KEYS[6].
local legs = {}
local recipients = {}      -- to_user_id -> index into KEYS
local recipient_ids = {}   -- in the order of KEYS
local crossing = false     -- whether a leg crosses buckets
for i = 1, tonumber(count_arg) do
  local base = FIRST_LEG_ARG + LEG_ARGS * (i - 1)
  local leg = {to_id = ARGV[base], to_name = ARGV[base + 1], amount_arg = ARGV[base + 2],
               verdict = ARGV[base + 3]}
  if (leg.to_id ~= "" and not valid_id(leg.to_id))
    or (leg.to_name ~= "" and not valid_username(leg.to_name))
    or (leg.to_id == "" and leg.to_name == "")
    or not valid_positive(leg.amount_arg, MAX_AMOUNT_KOPECKS)
    or (leg.verdict ~= "" and (not VERDICTS[leg.verdict] or leg.to_id == ""
                               or leg.to_id == from_id)) then
    return invalid()
  end
  leg.amount = tonumber(leg.amount_arg)
  crossing = crossing or leg.verdict ~= ""
  if leg.verdict == "" and leg.to_id ~= "" and leg.to_id ~= from_id
    and not recipients[leg.to_id] then
    recipient_ids[#recipient_ids + 1] = leg.to_id
    recipients[leg.to_id] = 6 + #recipient_ids
  end
  legs[i] = leg
end

-- The recipients' wallets follow the misses counter; transit and outbound:due follow them.
local transit_index = 7 + #recipient_ids
local frame = money_frame(from_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, 6 + #recipient_ids + (crossing and 2 or 0))
if not frame.valid or KEYS[5] ~= bucket_member_key("holds", from_id)
  or not valid_recipient_misses(KEYS[6], from_id, misses_limit_arg, misses_window_arg)
  or (crossing and not (valid_positive(deadline_arg, MAX_TTL_S)
                        and KEYS[transit_index] == bucket_key("transit")
                        and KEYS[transit_index + 1] == bucket_key("outbound:due")))
  or (not crossing and deadline_arg ~= "") then
  return invalid()
end
for j, to_id in ipairs(recipient_ids) do
  if KEYS[6 + j] ~= bucket_member_key("user", to_id) then
    return invalid()
  end
end

-- A lookup of this request's lost reply came first: it answered "not applied", so nothing
-- may be done now.
local decided = recorded_request_outcome(KEYS[4])
if decided then
  return {decided[1], decided[2], decided[3], "", "0"}
end

local now_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "0"}
end
-- The n ids after the counter must all be in its epoch: none may be a multiple of
-- TXN_IDS_PER_EPOCH (refusal_before_money checked the first).
local seq = tonumber(redis.call("GET", KEYS[1]))
if math.floor((seq + #legs) / TXN_IDS_PER_EPOCH) ~= math.floor(seq / TXN_IDS_PER_EPOCH) then
  return {"epoch_exhausted", "", "", "", "0"}
end

-- A retry with the key gets the recorded reply back (its leg too, so that a replayed
-- refusal names the same field). The legs are compared in two forms, as transfer.lua
-- compares one: by name, where each leg that named a username has "@" and the name in lower
-- case (what a refusal records: a name registered later leaves it unchanged); and, when
-- every leg resolved, by id (what a batch that moved money records: `wallet rebuild` can
-- compute it again from the ledger, whose rows have the ids in leg order).
local by_name, by_id, all_resolved = {}, {}, true
for i, leg in ipairs(legs) do
  local target = leg.to_name ~= "" and ("@" .. string.lower(leg.to_name)) or leg.to_id
  by_name[i] = target .. "=" .. leg.amount_arg
  by_id[i] = leg.to_id .. "=" .. leg.amount_arg
  all_resolved = all_resolved and leg.to_id ~= ""
end
local name_fingerprint = request_fingerprint("batch", redis.sha1hex(table.concat(by_name, ",")))
local id_fingerprint = all_resolved
  and request_fingerprint("batch", redis.sha1hex(table.concat(by_id, ","))) or nil
local idem_key_name = frame_idempotency_key(frame)
local reply_fields = {"txn_id", "created_at_us", "leg"}
-- Refusals are recorded by name, money moved by id; either form is a retry.
local idem = idempotency_record(idem_key_name, ttl_arg, {name_fingerprint, id_fingerprint},
                                reply_fields)
local replay = idempotency_lookup(idem)
if replay then
  return replay
end
local misses_wait_ms = recipient_misses_wait_ms(KEYS[6], misses_limit_arg)
if misses_wait_ms then
  return {"too_many_unknown_recipients", misses_wait_ms, "", "", "0"}
end

local payer = wallet_amounts(KEYS[3], from_id)
if not payer then
  return {"account_not_found", "", "", "", "0"}
end
local due, due_sum = due_holds(KEYS[5], now_us)
local available = available_kopecks(payer, due_sum)

local function refuse_at(outcome, i)
  if outcome == "recipient_not_found" then
    count_recipient_miss(KEYS[6], misses_limit_arg, misses_window_arg)
  end
  return idempotency_remember(idem, {outcome, "", "", string.format("%d", i - 1), "0"})
end

-- Every leg in order; the first at fault is named.
local wallets = {}   -- to_user_id -> wallet_amounts, false when it has none
local credited = {}  -- to_user_id -> the legs' credits so far
local total = 0
for i, leg in ipairs(legs) do
  if leg.to_id == "" then
    return refuse_at("recipient_not_found", i)
  end
  if leg.to_id == from_id then
    return {"self_transfer", "", "", string.format("%d", i - 1), "0"}
  end
  if leg.verdict == "unasked" then
    return invalid()  -- the caller stopped asking too early: a bug
  end
  -- Across buckets the recipient's bucket found the wallet, and kept the headroom.
  local wallet = leg.verdict ~= "" and leg.verdict ~= "recipient_not_found"
  if leg.verdict == "" then
    wallet = wallets[leg.to_id]
    if wallet == nil then
      wallet = wallet_amounts(KEYS[recipients[leg.to_id]], leg.to_id) or false
      wallets[leg.to_id] = wallet
    end
  end
  if not wallet then
    return refuse_at("recipient_not_found", i)
  end
  total = total + leg.amount
  if total > available then
    return refuse_at("insufficient_funds", i)
  end
  if leg.verdict == "" then
    credited[leg.to_id] = (credited[leg.to_id] or 0) + leg.amount
  end
  if (leg.verdict == "balance_limit_exceeded")
    or (leg.verdict == "" and not credit_fits(wallet, credited[leg.to_id])) then
    return refuse_at("balance_limit_exceeded", i)
  end
end

-- Every check has passed: from here on the script only writes. Integers are
-- formatted with %d because tostring() would print 10^15 as "1e+15".
frame_keep_stamp(frame)
release_holds(due, KEYS[5], KEYS[3], KEYS[2], from_id, now_us)
-- The balances each leg's record carries are computed from the ones read above, in this
-- same atomic step, and each wallet is written once, by its total: what one HINCRBY per leg
-- and side left before, with n - 1 commands fewer for the payer and as many fewer as a
-- recipient has legs beyond its first (docs/performance.md, "Time inside Redis").
local last_id = redis.call("INCRBY", KEYS[1], #legs)
local first_id = last_id - #legs + 1
local from_balance = payer.balance
local to_balances = {}  -- to_user_id -> balance after its legs so far
local due_us = crossing and string.format("%d", frame.stamp_us + tonumber(deadline_arg) * 1000)
local reserved = 0      -- kopecks of the legs across buckets, into transit
local open_legs = 0     -- how many
for i, leg in ipairs(legs) do
  from_balance = from_balance - leg.amount
  local txn_id = string.format("%d", first_id + i - 1)
  local from_balance_arg = string.format("%d", from_balance)
  local record
  if leg.verdict ~= "" then
    reserved = reserved + leg.amount
    redis.call("HSET", bucket_member_key("outbound", txn_id), "state", "reserved",
      "from", from_id, "to", leg.to_id, "amount", leg.amount_arg,
      "token", token .. "-" .. string.format("%d", i - 1), "created_at_us", now_us,
      "from_balance", from_balance_arg, "idem_key", idem_key, "request", token)
    open_legs = open_legs + 1
    redis.call("ZADD", KEYS[transit_index + 1], due_us, txn_id)
    record = {"id", txn_id, "kind", "transfer_out", "from", from_id, "to", leg.to_id,
      "amount", leg.amount_arg, "created_at_us", now_us, "from_balance", from_balance_arg,
      "idem_key", idem_key, "leg", string.format("%d", i - 1)}
  else
    local to_balance = (to_balances[leg.to_id] or wallets[leg.to_id].balance) + leg.amount
    to_balances[leg.to_id] = to_balance
    record = {"id", txn_id, "kind", "transfer",
      "from", from_id, "to", leg.to_id, "amount", leg.amount_arg, "created_at_us", now_us,
      "from_balance", from_balance_arg,
      "to_balance", string.format("%d", to_balance), "idem_key", idem_key}
  end
  if frame.has_key then
    -- On every leg: a one-leg batch is otherwise a transfer's row (`wallet rebuild`).
    record[#record + 1], record[#record + 2] = "idem_fp", id_fingerprint
  end
  redis.call("XADD", KEYS[2], "*", unpack(record))
end
redis.call("HINCRBY", KEYS[3], "balance_kopecks", string.format("%d", -total))
if crossing then
  redis.call("INCRBY", KEYS[transit_index], string.format("%d", reserved))
end
for _, to_id in ipairs(recipient_ids) do  -- each has legs, all of them checked above
  redis.call("HINCRBY", KEYS[recipients[to_id]], "balance_kopecks",
             string.format("%d", credited[to_id]))
end
local moved = {"ok", string.format("%d", first_id), now_us, "", "0"}
record_request_outcome(KEYS[4], outcome_ttl_arg, moved)
if crossing then
  keep_request_open(KEYS[4], open_legs)
end
return idempotency_remember(
  idempotency_record(idem_key_name, ttl_arg, {id_fingerprint, name_fingerprint}, reply_fields),
  moved)
