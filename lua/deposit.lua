-- deposit: credit amount_kopecks to a user's own balance, append the
-- transaction to the stream and remember the outcome under an idempotency key,
-- all in one atomic step. With a session to check, the caller's session is
-- verified in the same step, so an HTTP deposit costs one round trip. A deposit that
-- moves money is recorded under the request's token too, for a reply that gets lost
-- (includes/request_outcome.lua).
--
-- KEYS[1]  txn:seq:{b}               string: last transaction id issued, within its epoch
-- KEYS[2]  txn:stream:{b}            stream: one entry per transaction
-- KEYS[3]  user:{b}:<user_id>        hash: balance_kopecks incoming_kopecks
-- KEYS[4]  req:{b}:<user_id>:<token>   hash: outcome txn_id created_at_us (request_outcome)
-- KEYS[5]  txn:clock:{b}             string: the bucket's last stamp, microseconds
-- KEYS[6]  idem:{b}:<user_id>:<key>  present iff ARGV[3] is not ""; hash: fingerprint
--                                    ("deposit:<amount>") outcome txn_id created_at_us
-- KEYS[n]  wallet_session:{b}:<token>       the last key; present iff ARGV[5] is "1"
-- ARGV[1]  user_id                   decimal, 1..15 digits, no leading zero
-- ARGV[2]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[3]  idempotency key           1..64 printable ASCII, or "" for none
-- ARGV[4]  idempotency ttl_s         decimal seconds, 1 .. 10^7
-- ARGV[5]  check session             "1": KEYS[n] must be a live session of user_id;
--                                    "0": no session (a trusted internal caller)
-- ARGV[6]  session absolute_s        decimal seconds, 1 .. 10^7: lifetime since login
-- ARGV[7]  session idle_s            decimal seconds, 1 .. 10^7: the TTL it gets back
-- ARGV[8]  request token             16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[9]  outcome ttl_s             decimal seconds, 1 .. 10^7: how long the record under
--                                    the token is kept
--
-- Returns  {outcome, txn_id, created_at_us, replayed}, all strings:
--   outcome "ok"                      money moved (or replayed: replayed = "1")
--   outcome "not_applied"             the token already has a record (a lookup found it
--                                     missing): that record is answered, nothing is done
--   outcome "balance_limit_exceeded"  balance + incoming would pass 10^15 (recorded under the key)
--                                     (incoming: what pending holds toward the user bring)
--   outcome "unauthorized"            the session is gone, expired or another user's
--                                     (checked first; not recorded)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data
--                                     (not recorded)
--   outcome "epoch_exhausted"         txn:seq:{b} is at the last id of its epoch
--                                     (not recorded)
--   outcome "account_not_found"       no wallet for user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)
--   txn_id and created_at_us are "" unless outcome is "ok".
-- Stream entry fields: id kind from to amount created_at_us from_balance
-- to_balance idem_key (from and from_balance are "" for a deposit).

-- @include bucket
-- @include validate
-- @include check_session
-- @include stamp
-- @include money_frame
-- @include fingerprint
-- @include idempotency
-- @include request_outcome
-- @include holds

local user_id, amount_arg, idem_key, ttl_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local session_flag, absolute_arg, idle_arg = ARGV[5], ARGV[6], ARGV[7]
local token, outcome_ttl_arg = ARGV[8], ARGV[9]
local frame = money_frame(user_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, 4)

if #ARGV ~= 9 or not frame.valid or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS) then
  return {"invalid_argument", "", "", "0"}
end

-- A lookup of this request's lost reply came first: it answered "not applied", so nothing
-- may be done now.
local decided = recorded_request_outcome(KEYS[4])
if decided then
  return decided
end

local created_at_us, refusal = money_frame_refusal(frame)
if refusal then
  return {refusal, "", "", "0"}
end

-- A retry with the key gets the recorded reply back. Its fields between outcome and
-- replayed are recorded as txn_id and created_at_us: the names restore_idempotency.lua
-- writes and records already stored have.
local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg,
                                {request_fingerprint("deposit", amount_arg)},
                                {"txn_id", "created_at_us"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end

local wallet = wallet_amounts(KEYS[3], user_id)
if not wallet then
  return {"account_not_found", "", "", "0"}
end

if not credit_fits(wallet, tonumber(amount_arg)) then
  return idempotency_remember(idem, {"balance_limit_exceeded", "", "", "0"})
end

-- Every check has passed: from here on the script only writes. Integers are
-- formatted with %d because tostring() would print 10^15 as "1e+15".
frame_keep_stamp(frame)
local new_balance = redis.call("HINCRBY", KEYS[3], "balance_kopecks", amount_arg)
local txn_id = string.format("%d", redis.call("INCR", KEYS[1]))
redis.call("XADD", KEYS[2], "*",
  "id", txn_id, "kind", "deposit", "from", "", "to", user_id, "amount", amount_arg,
  "created_at_us", created_at_us, "from_balance", "", "to_balance",
  string.format("%d", new_balance), "idem_key", idem_key)
local moved = {"ok", txn_id, created_at_us, "0"}
record_request_outcome(KEYS[4], outcome_ttl_arg, moved)
return idempotency_remember(idem, moved)
