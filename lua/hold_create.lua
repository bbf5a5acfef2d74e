-- hold_create: reserve amount_kopecks of the payer (the acting user) for one payee, in one
-- atomic step: the payer's held_kopecks and the payee's incoming_kopecks grow by the amount,
-- the hold is written (hash hold:<id>, holds:{b}:<payer>, holds:due:{b}), a hold_created record is
-- appended to the stream, and the outcome is remembered under the request's token and the
-- payer's idempotency key (docs/holds.md). It keeps transfer.lua's order: validate, the
-- token's recorded outcome, session and id counter, idempotency replay, reads and checks,
-- then only writes. The payer's holds that have expired count as available and are released
-- (includes/holds.lua) once every check has passed.
--
-- The hold's hash hold:<id> is NOT among KEYS: its name is built here from the id this
-- script assigns (INCR txn:seq:{b}), which the caller cannot know in advance.
--
-- A hold for a username that resolved to no user comes here with no to_user_id, as in
-- transfer.lua: refused as recipient_not_found, recorded under the key.
--
-- A hold for a user of another bucket (docs/scaling.md, "Holds across buckets") comes here
-- after lua/transfer_expect.lua ran on the payee's bucket under the same token, for the
-- hold's amount and its whole life, and answered what it found (ARGV[16]): the payer's side
-- is as within one bucket, and the payee's side is that expectation, which the capture's
-- credit applies or the end of the hold aborts; the hash keeps its token (field `token`), and
-- the record under the token lives as long as the hash.
--
-- KEYS[1]  txn:seq:{b}                  string: last id issued (holds and transactions)
-- KEYS[2]  txn:stream:{b}               stream: one entry per transaction or hold event
-- KEYS[3]  user:{b}:<from_user_id>      hash: balance_kopecks held_kopecks (the payer)
-- KEYS[4]  req:{b}:<from_user_id>:<token> hash: outcome txn_id created_at_us (request_outcome;
--                                       txn_id is the hold id)
-- KEYS[5]  holds:{b}:<from_user_id>     sorted set: the payer's holds held_kopecks counts
-- KEYS[6]  holds:due:{b}                sorted set: the holds incoming_kopecks counts
-- KEYS[7]  throttle:recipient-misses:{b}:<from_user_id>
--                                       string, TTL: recipient_not_found answers counted
--                                       (includes/recipient_misses.lua)
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  user:{b}:<to_user_id>        iff ARGV[2] is not "" and ARGV[16] is ""; hash:
--                                       incoming_kopecks (payee)
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<from_user_id>:<key>  iff ARGV[5] is not ""; hash: fingerprint
--                                       ("hold:<to>:<amount>:<expires_in_s>", or
--                                       "hold:@<name>:<amount>:<expires_in_s>" when the name
--                                       resolved to no one) outcome txn_id (the hold id)
--                                       created_at_us expires_at_us
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[7] is "1"
-- ARGV[1]  from_user_id                 decimal, 1..15 digits, no leading zero
-- ARGV[2]  to_user_id                   decimal, 1..15 digits, no leading zero; "" when the
--                                       request named a username that resolved to no one
-- ARGV[3]  amount_kopecks               decimal, 1 .. 10^12
-- ARGV[4]  expires_in_s                 decimal seconds, 60 .. 604800
-- ARGV[5]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[6]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[7]  check session                "1": KEYS[n] must be a live session of
--                                       from_user_id; "0": no session (internal caller)
-- ARGV[8]  session absolute_s           decimal seconds, 1 .. 10^7
-- ARGV[9]  session idle_s               decimal seconds, 1 .. 10^7
-- ARGV[10] to_username                  the username the request named, or "" when it named
--                                       a user id; required when ARGV[2] is ""
-- ARGV[11] request token                16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[12] outcome ttl_s                decimal seconds, 1 .. 10^7
-- ARGV[13] hold_retention_s             decimal seconds, 1 .. 10^7: hold:<id> lives until
--                                       expires_at + this
-- ARGV[14] recipient misses limit       decimal, 1 .. 10^9: per window, then refused
-- ARGV[15] recipient misses window_ms   decimal, 1 .. 10^12
-- ARGV[16] across buckets               "" when the payee is in this bucket; else what
--                                       lua/transfer_expect.lua answered on the payee's:
--                                       "expected", "recipient_not_found" or
--                                       "balance_limit_exceeded" (ARGV[2] is then not "")
--
-- Returns  {outcome, hold_id, created_at_us, expires_at_us, replayed}, all strings:
--   outcome "ok"                      the hold was made (or replayed: replayed = "1")
--   outcome "not_applied"             the token already has a record (a lookup found it
--                                     missing): that record is answered, nothing is done
--   outcome "recipient_not_found"     no such payee wallet or name (recorded under the key);
--                                     counted in KEYS[7] unless replayed
--   outcome "too_many_unknown_recipients"  the payer's recipient misses reached the limit
--                                     in this window (checked after a replay; not recorded);
--                                     the second field is then the ms until it ends
--   outcome "too_many_holds"          the payer has 1000 holds pending (recorded under the key)
--   outcome "insufficient_funds"      payer's available < amount (recorded under the key)
--   outcome "balance_limit_exceeded"  payee would pass 10^15 (recorded under the key):
--                                     balance + incoming + amount > 10^15 (as the payee's
--                                     bucket found, across buckets)
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "self_transfer"           from = to (not recorded: a validation error)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for from_user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
--   hold_id, created_at_us and expires_at_us are "" unless outcome is "ok"; expires_at_us
--   is created_at_us + expires_in_s * 10^6 exactly.
-- Stream entry fields: kind ("hold_created") hold from to amount created_at_us
-- expires_at_us idem_key, and idem_fp (the fingerprint recorded under the key) iff ARGV[5]
-- is not ""; before it, one hold_expired entry per expired hold released.

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

local MIN_EXPIRES_IN_S, MAX_EXPIRES_IN_S = 60, 604800
local MAX_PENDING_HOLDS = 1000

local from_id, to_id, amount_arg, expires_in_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_key, ttl_arg, session_flag, absolute_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local idle_arg, to_name, token, outcome_ttl_arg = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local retention_arg, misses_limit_arg, misses_window_arg = ARGV[13], ARGV[14], ARGV[15]
local across = ARGV[16]
local resolved = to_id ~= ""
local crossing = across ~= ""
-- The payee's wallet follows the misses counter, only when the name resolved to a user of
-- this bucket.
local frame = money_frame(from_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, (resolved and not crossing) and 8 or 7)

if #ARGV ~= 16 or not frame.valid or (resolved and not valid_id(to_id))
  or (crossing and not (resolved and (across == "expected" or across == "recipient_not_found"
                                      or across == "balance_limit_exceeded")))
  or (to_name ~= "" and not valid_username(to_name)) or (not resolved and to_name == "")
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or not valid_positive(expires_in_arg, MAX_EXPIRES_IN_S)
  or tonumber(expires_in_arg) < MIN_EXPIRES_IN_S
  or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[5] ~= bucket_member_key("holds", from_id) or KEYS[6] ~= bucket_key("holds:due")
  or not valid_recipient_misses(KEYS[7], from_id, misses_limit_arg, misses_window_arg)
  or (resolved and not crossing and KEYS[8] ~= bucket_member_key("user", to_id)) then
  return {"invalid_argument", "", "", "", "0"}
end

local decided = recorded_request_outcome(KEYS[4])
if decided then
  -- {outcome, hold_id, created_at_us, "0"}: the shape lookup_request.lua answers with too.
  return decided
end

local created_at_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "", "0"}
end
if from_id == to_id then
  return {"self_transfer", "", "", "", "0"}
end

local fingerprints = {}
if resolved then
  fingerprints[#fingerprints + 1] = request_fingerprint("hold", to_id, amount_arg, expires_in_arg)
end
if to_name ~= "" then
  fingerprints[#fingerprints + 1] =
    request_fingerprint("hold", "@" .. string.lower(to_name), amount_arg, expires_in_arg)
end
local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg, fingerprints,
                                {"txn_id", "created_at_us", "expires_at_us"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end
local misses_wait_ms = recipient_misses_wait_ms(KEYS[7], misses_limit_arg)
if misses_wait_ms then
  return {"too_many_unknown_recipients", misses_wait_ms, "", "", "0"}
end

local payer = wallet_amounts(KEYS[3], from_id)
if not payer then
  return {"account_not_found", "", "", "", "0"}
end
local payee = nil
if crossing then
  payee = across ~= "recipient_not_found"
elseif resolved then
  payee = wallet_amounts(KEYS[8], to_id)
end
if not payee then
  count_recipient_miss(KEYS[7], misses_limit_arg, misses_window_arg)
  return idempotency_remember(idem, {"recipient_not_found", "", "", "", "0"})
end

local now_us = tonumber(created_at_us)
local due, due_sum = due_holds(KEYS[5], created_at_us)
local amount = tonumber(amount_arg)
if redis.call("ZCARD", KEYS[5]) - #due >= MAX_PENDING_HOLDS then
  return idempotency_remember(idem, {"too_many_holds", "", "", "", "0"})
end
if available_kopecks(payer, due_sum) < amount then
  return idempotency_remember(idem, {"insufficient_funds", "", "", "", "0"})
end
if (crossing and across == "balance_limit_exceeded")
  or (not crossing and not credit_fits(payee, amount)) then
  return idempotency_remember(idem, {"balance_limit_exceeded", "", "", "", "0"})
end

-- Every check has passed: from here on the script only writes.
frame_keep_stamp(frame)
release_holds(due, KEYS[5], KEYS[3], KEYS[2], from_id, created_at_us)
local hold_id = string.format("%d", redis.call("INCR", KEYS[1]))
local expires_at_us = string.format("%d", now_us + tonumber(expires_in_arg) * 1000000)
-- The hold's hash first: it is the one key not in KEYS (see above), so if a server ever
-- refused it mid-script, no money would have been held yet.
local hold_key = bucket_member_key("hold", hold_id)
local hold_fields = {"from", from_id, "to", to_id, "amount", amount_arg, "status", "pending",
  "captured_amount", "0", "created_at_us", created_at_us, "expires_at_us", expires_at_us,
  "capture_txn_id", ""}
if crossing then
  hold_fields[#hold_fields + 1], hold_fields[#hold_fields + 2] = "token", token
end
redis.call("HSET", hold_key, unpack(hold_fields))
local hold_gone_at_ms = string.format("%d",
  math.floor(tonumber(expires_at_us) / 1000) + tonumber(retention_arg) * 1000)
redis.call("PEXPIREAT", hold_key, hold_gone_at_ms)
local held = redis.call("HINCRBY", KEYS[3], "held_kopecks", amount_arg)
if not crossing then
  redis.call("HINCRBY", KEYS[8], "incoming_kopecks", amount_arg)
end
assert(held <= payer.balance, "invariant: held above balance for user " .. from_id)
redis.call("ZADD", KEYS[5], expires_at_us, hold_id .. ":" .. to_id .. ":" .. amount_arg)
redis.call("ZADD", KEYS[6], expires_at_us,
  hold_id .. ":" .. from_id .. ":" .. to_id .. ":" .. amount_arg)
local record = {"kind", "hold_created", "hold", hold_id, "from", from_id, "to", to_id,
  "amount", amount_arg, "created_at_us", created_at_us, "expires_at_us", expires_at_us,
  "idem_key", idem_key}
if frame.has_key then
  -- What idempotency_remember records below, for `wallet rebuild` (docs/holds.md).
  record[#record + 1], record[#record + 2] = "idem_fp", fingerprints[1]
end
redis.call("XADD", KEYS[2], "*", unpack(record))
local made = {"ok", hold_id, created_at_us, expires_at_us, "0"}
record_request_outcome(KEYS[4], outcome_ttl_arg, made)
if crossing then
  -- Recovery of the hold's expectation finds the hold by this record (its txn_id), for as
  -- long as the hold's hash may tell its status (service/redis/crossing.py).
  redis.call("PEXPIREAT", KEYS[4], hold_gone_at_ms)
end
return idempotency_remember(idem, made)
