-- transfer: move amount_kopecks from one user's balance to another's, append
-- the transaction to the stream and remember the outcome under the sender's
-- idempotency key, all in one atomic step.
--
-- KEYS[1]  txn:seq                   string: last transaction id issued
-- KEYS[2]  txn:stream                stream: one entry per transaction
-- KEYS[3]  user:{<from_user_id>}     hash: balance_kopecks (debited)
-- KEYS[4]  user:{<to_user_id>}       hash: balance_kopecks (credited)
-- KEYS[5]  idem:{<from_user_id>}:<key>  optional; present iff ARGV[4] is not ""
-- ARGV[1]  from_user_id              decimal, 1..15 digits, no leading zero
-- ARGV[2]  to_user_id                decimal, 1..15 digits, no leading zero
-- ARGV[3]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[4]  idempotency key           1..64 printable ASCII, or "" for none
-- ARGV[5]  idempotency ttl_s         decimal seconds, 1 .. 10^7
--
-- Returns  {outcome, txn_id, created_at_us, replayed}, all strings:
--   outcome "ok"                      money moved (or replayed: replayed = "1")
--   outcome "recipient_not_found"     no wallet for to_user_id (recorded under the key)
--   outcome "insufficient_funds"      sender balance < amount (recorded under the key)
--   outcome "balance_limit_exceeded"  recipient would pass 10^15 (recorded under the key)
--   outcome "self_transfer"           from = to (not recorded: a validation error)
--   outcome "idempotency_key_reused"  the key was used with another request (not recorded)
--   outcome "account_not_found"       no wallet for from_user_id (not recorded)
--   outcome "invalid_argument"        KEYS/ARGV fail validation (not recorded)
--   txn_id and created_at_us are "" unless outcome is "ok".
-- Stream entry fields: id kind from to amount created_at_us from_balance
-- to_balance idem_key.

local MAX_AMOUNT_KOPECKS = 1000000000000        -- 10^12
local MAX_BALANCE_KOPECKS = 1000000000000000    -- 10^15, exact in a Lua double

local function valid_id(s)
  return type(s) == "string" and #s <= 15 and string.match(s, "^[1-9]%d*$") ~= nil
end

local from_id, to_id, amount_arg, idem_key, ttl_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local has_key = idem_key ~= nil and idem_key ~= ""

if #ARGV ~= 5 or not valid_id(from_id) or not valid_id(to_id)
  or type(amount_arg) ~= "string" or #amount_arg > 13 or not string.match(amount_arg, "^[1-9]%d*$")
  or type(ttl_arg) ~= "string" or #ttl_arg > 8 or not string.match(ttl_arg, "^[1-9]%d*$")
  or KEYS[1] ~= "txn:seq" or KEYS[2] ~= "txn:stream"
  or KEYS[3] ~= "user:{" .. from_id .. "}" or KEYS[4] ~= "user:{" .. to_id .. "}"
  or (has_key and (#idem_key > 64 or string.find(idem_key, "[^\32-\126]")
                   or #KEYS ~= 5 or KEYS[5] ~= "idem:{" .. from_id .. "}:" .. idem_key))
  or (not has_key and #KEYS ~= 4) then
  return {"invalid_argument", "", "", "0"}
end
local amount = tonumber(amount_arg)
if amount > MAX_AMOUNT_KOPECKS or tonumber(ttl_arg) > 10000000 then
  return {"invalid_argument", "", "", "0"}
end
if from_id == to_id then
  return {"self_transfer", "", "", "0"}
end

local fingerprint = "transfer:" .. to_id .. ":" .. amount_arg
if has_key then
  local seen = redis.call("HMGET", KEYS[5], "fingerprint", "outcome", "txn_id", "created_at_us")
  if seen[1] then
    if seen[1] ~= fingerprint then
      return {"idempotency_key_reused", "", "", "0"}
    end
    return {seen[2], seen[3] or "", seen[4] or "", "1"}
  end
end

local from_str = redis.call("HGET", KEYS[3], "balance_kopecks")
if not from_str then
  return {"account_not_found", "", "", "0"}
end
local from_balance = tonumber(from_str)
assert(from_balance ~= nil and from_balance >= 0 and from_balance <= MAX_BALANCE_KOPECKS,
  "invariant: stored balance out of range for user " .. from_id)

local function remember(outcome, txn_id, created_at_us)
  if has_key then
    redis.call("HSET", KEYS[5], "fingerprint", fingerprint, "outcome", outcome,
      "txn_id", txn_id, "created_at_us", created_at_us)
    redis.call("EXPIRE", KEYS[5], ttl_arg)
  end
end

local to_str = redis.call("HGET", KEYS[4], "balance_kopecks")
if not to_str then
  remember("recipient_not_found", "", "")
  return {"recipient_not_found", "", "", "0"}
end
local to_balance = tonumber(to_str)
assert(to_balance ~= nil and to_balance >= 0 and to_balance <= MAX_BALANCE_KOPECKS,
  "invariant: stored balance out of range for user " .. to_id)

if from_balance < amount then
  remember("insufficient_funds", "", "")
  return {"insufficient_funds", "", "", "0"}
end
if to_balance + amount > MAX_BALANCE_KOPECKS then
  remember("balance_limit_exceeded", "", "")
  return {"balance_limit_exceeded", "", "", "0"}
end

-- Every check has passed: from here on the script only writes. Integers are
-- formatted with %d because tostring() would print 10^15 as "1e+15".
local new_from = redis.call("HINCRBY", KEYS[3], "balance_kopecks", "-" .. amount_arg)
local new_to = redis.call("HINCRBY", KEYS[4], "balance_kopecks", amount_arg)
local txn_id = string.format("%d", redis.call("INCR", KEYS[1]))
local now = redis.call("TIME")
local created_at_us = now[1] .. string.format("%06d", tonumber(now[2]))
redis.call("XADD", KEYS[2], "*",
  "id", txn_id, "kind", "transfer", "from", from_id, "to", to_id, "amount", amount_arg,
  "created_at_us", created_at_us, "from_balance", string.format("%d", new_from),
  "to_balance", string.format("%d", new_to), "idem_key", idem_key)
remember("ok", txn_id, created_at_us)
return {"ok", txn_id, created_at_us, "0"}
