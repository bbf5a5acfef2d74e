-- claim_key: the first step of a payee's capture or void of a hold in another bucket, on
-- the payee's bucket (includes/claim.lua): the payee's session is checked (it lives here,
-- not in the hold's bucket), and the request's Idempotency-Key is claimed for it, or its
-- recorded reply answered. Without a key only the session is checked and nothing is written.
--
-- KEYS[1]  txn:seq:{b}                  string: present unless Redis lost its data (not raised)
-- KEYS[2]  user:{b}:<user_id>           hash: the payee's (acting user's) wallet (read)
-- The keys below are present only when their condition holds, in this order:
-- KEYS[n]  idem:{b}:<user_id>:<key>     iff ARGV[2] is not ""; hash: the key's record
-- KEYS[n]  wallet_session:{b}:<token>   iff ARGV[4] is "1"
-- ARGV[1]  user_id                      the acting user (the hold's payee): decimal, 1..15 digits
-- ARGV[2]  idempotency key              1..64 printable ASCII, or "" for none
-- ARGV[3]  idempotency ttl_s            decimal seconds, 1 .. 10^7
-- ARGV[4]  check session                "1" or "0"
-- ARGV[5]  session absolute_s           decimal seconds, 1 .. 10^7
-- ARGV[6]  session idle_s               decimal seconds, 1 .. 10^7
-- ARGV[7]  action                       "capture" or "void"
-- ARGV[8]  hold_id                      decimal, 1..15 digits
-- ARGV[9]  amount_kopecks               capture: decimal 1 .. 10^12, or "" for the whole
--                                       hold; void: ""
-- ARGV[10] request token                16..64 of A-Z a-z 0-9 _ -: this request's
-- ARGV[11] token taken over             "" or the token of a claim of this body whose
--                                       request the hold's bucket said never applied, and now
--                                       never will (lua/lookup_request.lua): the claim
--                                       becomes this request's if it is still that one's
--
-- Returns  {outcome, f1, f2, f3, f4, replayed}, all strings:
--   outcome "claimed"                 the key is this request's to complete (or there is no
--                                     key): go on; f1..f4 ""
--   outcome "pending"                 another request of this body holds the claim and has not
--                                     completed it: f1 its token, f2 when it claimed (µs)
--   another outcome, replayed "1"     the key's completed record: the reply recorded
--                                     (f1..f4 the action's reply fields, includes/claim.lua)
--   outcome "idempotency_key_reused"  the key was used with another request (nothing written)
--   outcome "unauthorized"            the session is gone, expired or another user's
--   outcome "not_rebuilt"             txn:seq:{b} is missing: Redis lost its data, and with it
--                                     the key's records (nothing written)
--   outcome "account_not_found"       no wallet for user_id (nothing written)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include check_session
-- @include fingerprint
-- @include idempotency
-- @include claim

local user_id, idem_key, ttl_arg, session_flag = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local absolute_arg, idle_arg, action, hold_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local amount_arg, token, taken_over = ARGV[9], ARGV[10], ARGV[11]
local has_key, has_session = idem_key ~= "", session_flag == "1"
local key_count = 2 + (has_key and 1 or 0) + (has_session and 1 or 0)
local fingerprint = nil
if #ARGV == 11 then
  fingerprint = claim_fingerprint(action, hold_id, amount_arg)
end

if #ARGV ~= 11 or #KEYS ~= key_count or not valid_id(user_id) or not fingerprint
  or not valid_positive(ttl_arg, MAX_TTL_S) or (session_flag ~= "1" and session_flag ~= "0")
  or not valid_positive(absolute_arg, MAX_TTL_S) or not valid_positive(idle_arg, MAX_TTL_S)
  or not valid_request_token(token)
  or (taken_over ~= "" and (not has_key or not valid_request_token(taken_over)))
  or KEYS[1] ~= bucket_key("txn:seq") or KEYS[2] ~= bucket_member_key("user", user_id)
  or (has_key and (not valid_idempotency_key(idem_key)
                   or KEYS[3] ~= bucket_member_key("idem", user_id) .. ":" .. idem_key))
  or (has_session and not valid_session_key(KEYS[key_count])) then
  return {"invalid_argument", "", "", "", "", "0"}
end

local now = redis.call("TIME")
if has_session
  and not check_session(KEYS[key_count], user_id, tonumber(absolute_arg), idle_arg,
                        tonumber(now[1])) then
  return {"unauthorized", "", "", "", "", "0"}
end
if redis.call("EXISTS", KEYS[1]) == 0 then
  return {"not_rebuilt", "", "", "", "", "0"}
end
if redis.call("EXISTS", KEYS[2]) == 0 then
  return {"account_not_found", "", "", "", "", "0"}
end
if not has_key then
  return {"claimed", "", "", "", "", "0"}
end

local seen = redis.call("HMGET", KEYS[3], "fingerprint", "outcome", "token", "claimed_at_us")
if seen[1] and seen[1] == fingerprint and seen[2] == CLAIMED then
  if taken_over == "" or seen[3] ~= taken_over then
    return {"pending", seen[3], seen[4], "", "", "0"}
  end
elseif seen[1] then
  -- Completed (or another body's): the recorded reply, or idempotency_key_reused.
  local record = idempotency_record(KEYS[3], ttl_arg, {fingerprint}, CLAIM_REPLY_FIELDS[action])
  return idempotency_lookup(record)
end

local now_us = string.format("%d", tonumber(now[1]) * 1000000 + tonumber(now[2]))
redis.call("HSET", KEYS[3], "fingerprint", fingerprint, "outcome", CLAIMED, "token", token,
  "claimed_at_us", now_us)
redis.call("EXPIRE", KEYS[3], ttl_arg)
return {"claimed", "", "", "", "", "0"}
