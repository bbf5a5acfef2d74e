-- transfer: move amount_kopecks from one user's balance to another's, append
-- the transaction to the stream and remember the outcome under the sender's
-- idempotency key, all in one atomic step. With a session to check, the
-- sender's session is verified in the same step (one round trip per request). A
-- transfer that moves money is recorded under the request's token too, for a reply that
-- gets lost (includes/request_outcome.lua).
--
-- A transfer to a username whose name resolved to no user (in PostgreSQL, before the
-- call) comes here too, with no to_user_id: it is refused as recipient_not_found and
-- the refusal is recorded under the key like any other, so a retry after someone has
-- registered that name is answered with the refusal, not paid to them.
--
-- A transfer to a user of another bucket (docs/scaling.md, "Across buckets") comes here as
-- its reservation, after lua/transfer_expect.lua ran on the recipient's bucket under the
-- same token and answered what it found (ARGV[14]): the same checks and records, but the
-- amount goes from the sender's balance into the bucket's transit:{b}, and the reservation
-- outbound:{b}:<id> (its name built here from the id assigned) waits in outbound:due:{b}
-- for lua/transfer_settle.lua once lua/transfer_credit.lua applied it, or for
-- lua/transfer_void.lua once lua/transfer_abort.lua fenced it off.
--
-- The sender spends from available = balance - held + (their holds that have expired): the
-- expired holds are released (includes/holds.lua) only once every check has passed. The
-- recipient's ceiling counts incoming_kopecks (what pending holds toward them will bring).
--
-- KEYS[1]  txn:seq:{b}                  string: last transaction id issued, within its epoch
-- KEYS[2]  txn:stream:{b}               stream: one entry per transaction
-- KEYS[3]  user:{b}:<from_user_id>      hash: balance_kopecks (debited) held_kopecks
-- KEYS[4]  req:{b}:<from_user_id>:<token> hash: outcome txn_id created_at_us (request_outcome;
--                                       across buckets kept while the reservation is open)
-- KEYS[5]  holds:{b}:<from_user_id>     sorted set: the sender's holds held_kopecks counts
-- KEYS[6]  throttle:recipient-misses:{b}:<from_user_id>
--                                       string, TTL: recipient_not_found answers counted
--                                       (includes/recipient_misses.lua)
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  user:{b}:<to_user_id>        iff ARGV[2] is not "" and ARGV[14] is ""; hash:
--                                       balance_kopecks (credited) incoming_kopecks
-- KEYS[n]  transit:{b}                  iff ARGV[14] is not ""; string: kopecks reserved here
--                                       for credits on other buckets
-- KEYS[n]  outbound:due:{b}             iff ARGV[14] is not ""; sorted set: member txn_id,
--                                       score the reservation's deadline
-- KEYS[n]  txn:clock:{b}                always; string: the bucket's last stamp, microseconds
-- KEYS[n]  idem:{b}:<from_user_id>:<key>  iff ARGV[4] is not ""; hash: fingerprint
--                                       ("transfer:<to>:<amount>", or "transfer:@<name>:<amount>"
--                                       when the name resolved to no one) outcome txn_id
--                                       created_at_us
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[6] is "1"
-- ARGV[1]  from_user_id                 decimal, 1..15 digits, no leading zero
-- ARGV[2]  to_user_id                   decimal, 1..15 digits, no leading zero; "" when the
--                                       request named a username that resolved to no one
-- ARGV[3]  amount_kopecks               decimal, 1 .. 10^12
-- ARGV[4]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[5]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[6]  check session                "1": KEYS[n] must be a live session of
--                                       from_user_id; "0": no session (internal caller)
-- ARGV[7]  session absolute_s           decimal seconds, 1 .. 10^7: lifetime since login
-- ARGV[8]  session idle_s               decimal seconds, 1 .. 10^7: the TTL it gets back
-- ARGV[9]  to_username                  the username the request named (3..32 of A-Z a-z
--                                       0-9 _ . -), or "" when it named a user id; required
--                                       when ARGV[2] is ""
-- ARGV[10] request token                16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[11] outcome ttl_s                decimal seconds, 1 .. 10^7: how long the record under
--                                       the token is kept
-- ARGV[12] recipient misses limit       decimal, 1 .. 10^9: per window, then refused
-- ARGV[13] recipient misses window_ms   decimal, 1 .. 10^12
-- ARGV[14] across buckets               "" when the recipient is in this bucket; else what
--                                       lua/transfer_expect.lua answered on the recipient's:
--                                       "expected", "recipient_not_found" or
--                                       "balance_limit_exceeded" (ARGV[2] is then not "")
-- ARGV[15] deadline_ms                  decimal, 1 .. 10^7, iff ARGV[14] is not "": from now,
--                                       when recovery may settle or void the reservation;
--                                       "" otherwise
--
-- Returns  {outcome, txn_id, created_at_us, replayed}, all strings:
--   outcome "ok"                      money moved (or replayed: replayed = "1")
--   outcome "not_applied"             the token already has a record (a lookup found it
--                                     missing): that record is answered, nothing is done
--   outcome "recipient_not_found"     no wallet for to_user_id (recorded under the key), or
--                                     no user by the name: to_user_id is ""; counted in
--                                     KEYS[6] unless replayed
--   outcome "too_many_unknown_recipients"  the sender's recipient misses reached the limit
--                                     in this window (checked after a replay; not recorded);
--                                     the second field is then the ms until it ends
--   outcome "insufficient_funds"      sender's available < amount (recorded under the key)
--   outcome "balance_limit_exceeded"  recipient would pass 10^15 (recorded under the key),
--                                     counting its incoming_kopecks
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
--   txn_id and created_at_us are "" unless outcome is "ok".
-- Stream entry fields: id kind from to amount created_at_us from_balance
-- to_balance idem_key (kind "transfer"), or id kind from to amount created_at_us
-- from_balance idem_key (kind "transfer_out", a reservation); before it, one hold_expired
-- entry per expired hold released.

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

local from_id, to_id, amount_arg, idem_key, ttl_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local session_flag, absolute_arg, idle_arg, to_name = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local token, outcome_ttl_arg, misses_limit_arg, misses_window_arg = ARGV[10], ARGV[11], ARGV[12],
                                                                   ARGV[13]
local across, deadline_arg = ARGV[14], ARGV[15]
local resolved = to_id ~= ""
local crossing = across ~= ""
-- After the misses counter: the recipient's wallet, only when the name resolved to a user
-- of this bucket; transit and outbound:due, when the recipient is in another.
local own_keys = crossing and 8 or (resolved and 7 or 6)
local frame = money_frame(from_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                          token, outcome_ttl_arg, own_keys)

if #ARGV ~= 15 or not frame.valid or (resolved and not valid_id(to_id))
  or (crossing and not (resolved and valid_positive(deadline_arg, MAX_TTL_S)
                        and KEYS[7] == bucket_key("transit")
                        and KEYS[8] == bucket_key("outbound:due")
                        and (across == "expected" or across == "recipient_not_found"
                             or across == "balance_limit_exceeded")))
  or (not crossing and deadline_arg ~= "")
  or (to_name ~= "" and not valid_username(to_name)) or (not resolved and to_name == "")
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or KEYS[5] ~= bucket_member_key("holds", from_id)
  or not valid_recipient_misses(KEYS[6], from_id, misses_limit_arg, misses_window_arg)
  or (resolved and not crossing and KEYS[7] ~= bucket_member_key("user", to_id)) then
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
if from_id == to_id then
  return {"self_transfer", "", "", "0"}
end

-- A retry with the key gets the recorded reply back. Its fields between outcome and
-- replayed are recorded as txn_id and created_at_us: the names restore_idempotency.lua
-- writes and records already stored have. The body is compared after the name is
-- resolved: by the id when it resolved, and by the name as a refusal recorded while it
-- resolved to no one has it.
local fingerprints = {}
if resolved then
  fingerprints[#fingerprints + 1] = request_fingerprint("transfer", to_id, amount_arg)
end
if to_name ~= "" then
  fingerprints[#fingerprints + 1] =
    request_fingerprint("transfer", "@" .. string.lower(to_name), amount_arg)
end
local idem = idempotency_record(frame_idempotency_key(frame), ttl_arg, fingerprints,
                                {"txn_id", "created_at_us"})
local replay = idempotency_lookup(idem)
if replay then
  return replay
end
local misses_wait_ms = recipient_misses_wait_ms(KEYS[6], misses_limit_arg)
if misses_wait_ms then
  return {"too_many_unknown_recipients", misses_wait_ms, "", "0"}
end

local sender = wallet_amounts(KEYS[3], from_id)
if not sender then
  return {"account_not_found", "", "", "0"}
end
local amount = tonumber(amount_arg)

-- No recipient: the name resolved to no one, or the id has no wallet (here, or as the
-- recipient's bucket found).
local recipient = nil
if crossing then
  recipient = across ~= "recipient_not_found"
elseif resolved then
  recipient = wallet_amounts(KEYS[7], to_id)
end
if not recipient then
  count_recipient_miss(KEYS[6], misses_limit_arg, misses_window_arg)
  return idempotency_remember(idem, {"recipient_not_found", "", "", "0"})
end

local due, due_sum = due_holds(KEYS[5], created_at_us)
if available_kopecks(sender, due_sum) < amount then
  return idempotency_remember(idem, {"insufficient_funds", "", "", "0"})
end
if (crossing and across == "balance_limit_exceeded")
  or (not crossing and not credit_fits(recipient, amount)) then
  return idempotency_remember(idem, {"balance_limit_exceeded", "", "", "0"})
end

-- Every check has passed: from here on the script only writes. Integers are
-- formatted with %d because tostring() would print 10^15 as "1e+15".
frame_keep_stamp(frame)
release_holds(due, KEYS[5], KEYS[3], KEYS[2], from_id, created_at_us)
local new_from = string.format("%d",
  redis.call("HINCRBY", KEYS[3], "balance_kopecks", "-" .. amount_arg))
local txn_id = string.format("%d", redis.call("INCR", KEYS[1]))
if crossing then
  redis.call("INCRBY", KEYS[7], amount_arg)
  redis.call("HSET", bucket_member_key("outbound", txn_id), "state", "reserved",
    "from", from_id, "to", to_id, "amount", amount_arg, "token", token,
    "created_at_us", created_at_us, "from_balance", new_from, "idem_key", idem_key,
    "request", token)
  redis.call("ZADD", KEYS[8],
    string.format("%d", frame.stamp_us + tonumber(deadline_arg) * 1000), txn_id)
  redis.call("XADD", KEYS[2], "*",
    "id", txn_id, "kind", "transfer_out", "from", from_id, "to", to_id, "amount", amount_arg,
    "created_at_us", created_at_us, "from_balance", new_from, "idem_key", idem_key)
else
  local new_to = redis.call("HINCRBY", KEYS[7], "balance_kopecks", amount_arg)
  redis.call("XADD", KEYS[2], "*",
    "id", txn_id, "kind", "transfer", "from", from_id, "to", to_id, "amount", amount_arg,
    "created_at_us", created_at_us, "from_balance", new_from,
    "to_balance", string.format("%d", new_to), "idem_key", idem_key)
end
local moved = {"ok", txn_id, created_at_us, "0"}
record_request_outcome(KEYS[4], outcome_ttl_arg, moved)
if crossing then
  keep_request_open(KEYS[4], 1)
end
return idempotency_remember(idem, moved)
