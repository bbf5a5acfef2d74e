-- transfer_abort: sets the fence of a transfer across buckets on the payee's bucket
-- (docs/scaling.md, "Across buckets"), so that its credit can never land afterwards. An
-- expected record becomes aborted and the payee's headroom kept for it is released; a
-- missing one is written aborted (a tombstone: the credit of a reservation made after
-- this, or arriving late, finds it and does nothing). An applied record stays: the answer
-- tells the caller to settle instead. Called by recovery for what is past its deadline.
--
-- Called by the API when no reservation was made under the token and none ever will be
-- (the reservation on the payer's bucket was refused, or replayed, or found "not applied";
-- a hold across buckets was voided or expired on the payer's bucket), with ARGV[4] "1": the
-- expected record is then deleted and no tombstone written, so that a refused request
-- leaves nothing behind.
--
-- KEYS[1]  user:{b}:<to_user_id>          hash: incoming_kopecks (lowered)
-- KEYS[2]  inbound:{b}:<to_user_id>:<token>  hash: state amount txn_id
-- KEYS[3]  inbound:due:{b}                sorted set: member <to_user_id>:<token> (removed
--                                         unless applied, when the credit removed it)
-- ARGV[1]  to_user_id                     decimal, 1..15 digits, no leading zero
-- ARGV[2]  request token                  the token the expectation was written under
-- ARGV[3]  retention_s                    decimal seconds, 1 .. 10^7: how long the aborted
--                                         record is kept (a late credit must find it)
-- ARGV[4]  unused                         "1": no reservation uses the token (above); "0"
--
-- Returns  {outcome, txn_id}:
--   "aborted"            the record is aborted (now or before), or, unused, gone; txn_id ""
--   "applied"            the credit came first: txn_id is the transfer's
--   "invalid_argument"   KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include holds

local to_id, token, retention_arg, unused = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if #KEYS ~= 3 or #ARGV ~= 4 or (unused ~= "1" and unused ~= "0") or not valid_id(to_id) or not valid_request_token(token)
  or not valid_positive(retention_arg, MAX_TTL_S)
  or KEYS[1] ~= bucket_member_key("user", to_id)
  or KEYS[2] ~= bucket_member_key("inbound", to_id) .. ":" .. token
  or KEYS[3] ~= bucket_key("inbound:due") then
  return {"invalid_argument", ""}
end

local record = redis.call("HMGET", KEYS[2], "state", "amount", "txn_id")
if record[1] == "applied" then
  return {"applied", record[3]}
end
if record[1] == "expected" then
  local incoming = tonumber(redis.call("HGET", KEYS[1], "incoming_kopecks") or "0")
  assert(incoming >= tonumber(record[2]),
    "invariant: an expected credit is kept in the payee's incoming_kopecks")
  drop_incoming(KEYS[1], record[2])
end
redis.call("ZREM", KEYS[3], to_id .. ":" .. token)
if unused == "1" then
  redis.call("DEL", KEYS[2])
  return {"aborted", ""}
end
redis.call("HSET", KEYS[2], "state", "aborted")
redis.call("EXPIRE", KEYS[2], retention_arg)
return {"aborted", ""}
