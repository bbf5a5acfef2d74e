-- lookup_request: what became of a money request whose reply was lost on its way back to
-- the API (a timeout, a dropped connection); see includes/request_outcome.lua. Called
-- until Redis answers, within the API's bounded wait (service/redis/money.py).
--
-- KEYS[1]  req:{b}:<user_id>:<token>   hash: outcome txn_id created_at_us
-- KEYS[2]  txn:seq:{b}               string: last transaction id issued
-- ARGV[1]  user_id                   decimal, 1..15 digits, no leading zero
-- ARGV[2]  request token             16..64 of A-Z a-z 0-9 _ -
-- ARGV[3]  not_applied ttl_s         decimal seconds, 1 .. 10^7: how long the "not_applied"
--                                    written here stops a copy of the request still on its way
--
-- Returns  {outcome, txn_id, created_at_us, replayed}, all strings, as the money script
-- would have answered:
--   outcome "ok"                the request moved money: its transaction (replayed "0")
--   outcome "not_applied"       it did not, and now never will: no record was there, so
--                               "not_applied" is recorded under the token, which the money
--                               scripts do not run past (or it was recorded already)
--   outcome "not_rebuilt"   txn:seq:{b} is missing: Redis lost its data, and with it any
--                               record; nothing can be known here (nothing written)
--   outcome "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include request_outcome

local user_id, token, ttl_arg = ARGV[1], ARGV[2], ARGV[3]

if #KEYS ~= 2 or #ARGV ~= 3 or not valid_id(user_id) or not valid_request_token(token)
  or not valid_positive(ttl_arg, MAX_TTL_S)
  or KEYS[1] ~= bucket_member_key("req", user_id) .. ":" .. token
  or KEYS[2] ~= bucket_key("txn:seq") then
  return {"invalid_argument", "", "", "0"}
end

if redis.call("EXISTS", KEYS[2]) == 0 then
  return {"not_rebuilt", "", "", "0"}
end
local recorded = recorded_request_outcome(KEYS[1])
if recorded then
  -- A write of this call's own, so that the replica wait after it
  -- (WALLET_REDIS_MIN_REPLICAS: service/redis/replicas.py) covers the transaction the record
  -- names, written before: its expiry set again, unchanged, or, on the record of a request
  -- whose reservations across buckets are open (kept without expiry), its outcome.
  local ttl_ms = redis.call("PTTL", KEYS[1])
  if ttl_ms > 0 then
    redis.call("PEXPIRE", KEYS[1], ttl_ms)
  else
    redis.call("HSET", KEYS[1], "outcome", recorded[1])
  end
  return recorded
end
local not_applied = {"not_applied", "", "", "0"}
record_request_outcome(KEYS[1], ttl_arg, not_applied)
return not_applied
