-- complete_claim: the last step of a payee's capture or void of a hold in another bucket,
-- on the payee's bucket (includes/claim.lua): the key's claim becomes the record of the
-- reply, which a retry then replays; or, for a reply that is not recorded (a validation
-- refusal, a hold the API must look for in the ledger), the claim is released, so that the
-- key is free again as it would be after such a refusal in one bucket. Only the request
-- holding the claim completes it: one that a retry took over (claim_key.lua, ARGV[11]) does
-- nothing here.
--
-- KEYS[1]  idem:{b}:<user_id>:<key>     hash: the key's record
-- ARGV[1]  user_id                      decimal, 1..15 digits: the payee
-- ARGV[2]  idempotency key              1..64 printable ASCII
-- ARGV[3]  request token                the claim's (the request completing it)
-- ARGV[4]  idempotency ttl_s            decimal seconds, 1 .. 10^7: the record's life from now
-- ARGV[5]  action                       "capture" or "void"
-- ARGV[6]  outcome                      the reply's outcome to record ("ok", "hold_not_found",
--                                       "hold_not_pending"), or "" to release the claim
-- ARGV[7..10]                           the reply's fields (includes/claim.lua), "" each when
--                                       released or refused
--
-- Returns  {outcome}:
--   "completed"          recorded now, or by an earlier call of this request
--   "released"           the claim is deleted (now, or it was gone)
--   "taken_over"         the record is another request's now: nothing written
--   "invalid_argument"   KEYS/ARGV fail validation, or the record is not a claim of this
--                        action (nothing written)

-- @include bucket
-- @include validate
-- @include claim

local user_id, idem_key, token, ttl_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local action, outcome = ARGV[5], ARGV[6]
local fields = CLAIM_REPLY_FIELDS[action]
if #KEYS ~= 1 or #ARGV ~= 10 or not fields or not valid_id(user_id)
  or not valid_idempotency_key(idem_key) or not valid_request_token(token)
  or not valid_positive(ttl_arg, MAX_TTL_S) or outcome == CLAIMED
  or not string.match(outcome, "^[a-z_]*$")
  or KEYS[1] ~= bucket_member_key("idem", user_id) .. ":" .. idem_key then
  return {"invalid_argument"}
end

local seen = redis.call("HMGET", KEYS[1], "outcome", "token")
if not seen[1] then
  -- Gone: released before (or expired, a day after the claim).
  return {outcome == "" and "released" or "taken_over"}
end
if seen[2] ~= token then
  return {"taken_over"}
end
if seen[1] ~= CLAIMED then
  return {"completed"}
end
if outcome == "" then
  redis.call("DEL", KEYS[1])
  return {"released"}
end
local hash = {"outcome", outcome}
for i, name in ipairs(fields) do
  hash[#hash + 1] = name
  hash[#hash + 1] = ARGV[6 + i]
end
redis.call("HSET", KEYS[1], unpack(hash))
redis.call("EXPIRE", KEYS[1], ttl_arg)
return {"completed"}
