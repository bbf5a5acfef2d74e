-- transfer_expect: the first step of a transfer across buckets (docs/scaling.md, "Across
-- buckets"), on the payee's bucket, before the payer's bucket is touched. It checks what
-- could refuse the credit (the payee's wallet exists; balance + incoming + amount stays
-- within 10^15) and keeps the payee's headroom for it (incoming_kopecks, as a hold does), so
-- that the credit that follows the reservation on the payer's bucket can never be refused.
--
-- The record inbound:{b}:<to>:<token> is the fence between the credit and a void: the
-- credit moves it from expected to applied (lua/transfer_credit.lua), an abort from
-- expected to aborted (lua/transfer_abort.lua); whichever comes first decides, and a credit
-- that finds it aborted, or gone, does nothing. It is due at the deadline in
-- inbound:due:{b}, where recovery aborts it if it is still expected and the request that
-- made it never reserved: the record names the payer and the request's token, whose
-- outcome recovery looks up on the payer's bucket first (lua/lookup_request.lua, which
-- makes a "not applied" final), so that no reservation made is ever fenced off
-- (service/redis/crossing.py). The token of the record is the request's, or, for a leg of
-- a batch, the request's with "-<leg index>" (lua/transfer_batch.lua).
--
-- KEYS[1]  user:{b}:<to_user_id>          hash: incoming_kopecks (raised)
-- KEYS[2]  inbound:{b}:<to_user_id>:<token>  hash: state ("expected") amount from request
--                                         hold (written)
-- KEYS[3]  inbound:due:{b}                sorted set: member <to_user_id>:<token>, score
--                                         the deadline (microseconds since the epoch)
-- ARGV[1]  to_user_id                     decimal, 1..15 digits, no leading zero
-- ARGV[2]  amount_kopecks                 decimal, 1 .. 10^12
-- ARGV[3]  request token                  16..64 of A-Z a-z 0-9 _ -, new for every request
-- ARGV[4]  deadline_ms                    decimal, 1 .. 10^10: from now, when recovery may
--                                         abort it
-- ARGV[5]  from_user_id                   decimal, 1..15 digits, <> to: the payer
-- ARGV[6]  request token                  the request's token, under which the payer's
--                                         bucket records its outcome
-- ARGV[7]  hold                           "1": the expectation of a hold's capture; "0": of a
--                                         transfer's (or a refund's, or a batch leg's) credit
--
-- Returns  {outcome}:
--   "expected"                the headroom is kept and the record written
--   "recipient_not_found"     no wallet for to_user_id (nothing written)
--   "balance_limit_exceeded"  the payee would pass 10^15, counting incoming_kopecks
--                             (nothing written)
--   "token_reused"            the token already has a record (nothing written)
--   "invalid_argument"        KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include holds

local to_id, amount_arg, token, deadline_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local from_id, request_token, hold_flag = ARGV[5], ARGV[6], ARGV[7]
if #KEYS ~= 3 or #ARGV ~= 7 or not valid_id(to_id) or (hold_flag ~= "1" and hold_flag ~= "0")
  or not valid_id(from_id) or from_id == to_id or not valid_request_token(request_token)
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS) or not valid_request_token(token)
  or not valid_positive(deadline_arg, MAX_TTL_S * 1000)
  or KEYS[1] ~= bucket_member_key("user", to_id)
  or KEYS[2] ~= bucket_member_key("inbound", to_id) .. ":" .. token
  or KEYS[3] ~= bucket_key("inbound:due") then
  return {"invalid_argument"}
end

local payee = wallet_amounts(KEYS[1], to_id)
if not payee then
  return {"recipient_not_found"}
end
if not credit_fits(payee, tonumber(amount_arg)) then
  return {"balance_limit_exceeded"}
end
if redis.call("EXISTS", KEYS[2]) == 1 then
  return {"token_reused"}
end

local now = redis.call("TIME")
local deadline_us = tonumber(now[1]) * 1000000 + tonumber(now[2]) + tonumber(deadline_arg) * 1000
redis.call("HINCRBY", KEYS[1], "incoming_kopecks", amount_arg)
redis.call("HSET", KEYS[2], "state", "expected", "amount", amount_arg, "from", from_id,
  "request", request_token, "hold", hold_flag)
redis.call("ZADD", KEYS[3], string.format("%d", deadline_us), to_id .. ":" .. token)
return {"expected"}
