-- restore_idempotency: put back the idempotency record of one accepted
-- transaction from the ledger (`wallet rebuild`), so that a retry with the same
-- key replays the transaction instead of moving money again. The record is the
-- one deposit.lua / transfer.lua wrote: the same fingerprint, outcome "ok",
-- txn_id and created_at_us, and it expires ttl_s after created_at_us (not ttl_s
-- after the rebuild). A record Redis still holds under the key is kept as it is.
--
-- KEYS[1]  idem:{<user_id>}:<key>    hash: fingerprint outcome txn_id created_at_us
-- ARGV[1]  user_id                   the key's owner: the depositor, or a transfer's sender
-- ARGV[2]  idempotency key           1..64 printable ASCII
-- ARGV[3]  kind                      "deposit" | "transfer"
-- ARGV[4]  to_user_id                decimal; = user_id for a deposit, <> for a transfer
-- ARGV[5]  amount_kopecks            decimal, 1 .. 10^12
-- ARGV[6]  txn_id                    decimal, 1..15 digits
-- ARGV[7]  created_at_us             decimal microseconds since the epoch, 1..16 digits
-- ARGV[8]  ttl_s                     decimal seconds, 1 .. 10^7
--
-- Returns  {outcome}:
--   outcome "restored"          the record was written, expiring at created_at + ttl_s
--   outcome "exists"            Redis already holds a record under the key (unchanged)
--   outcome "expired"           created_at + ttl_s has passed (nothing written)
--   outcome "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include validate
-- @include fingerprint

local user_id, idem_key, kind, to_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local amount_arg, txn_id, created_arg, ttl_arg = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

if #KEYS ~= 1 or #ARGV ~= 8 or not valid_id(user_id) or not valid_id(to_id)
  or not valid_id(txn_id)
  or not valid_idempotency_key(idem_key)
  or not ((kind == "deposit" and to_id == user_id) or (kind == "transfer" and to_id ~= user_id))
  or type(amount_arg) ~= "string" or #amount_arg > 13 or not string.match(amount_arg, "^[1-9]%d*$")
  or type(created_arg) ~= "string" or #created_arg > 16 or not string.match(created_arg, "^[1-9]%d*$")
  or type(ttl_arg) ~= "string" or #ttl_arg > 8 or not string.match(ttl_arg, "^[1-9]%d*$")
  or KEYS[1] ~= "idem:{" .. user_id .. "}:" .. idem_key then
  return {"invalid_argument"}
end
if tonumber(amount_arg) > MAX_AMOUNT_KOPECKS or tonumber(ttl_arg) > 10000000 then
  return {"invalid_argument"}
end

if redis.call("EXISTS", KEYS[1]) == 1 then
  return {"exists"}
end

-- Milliseconds by dropping the last three digits: exact, no floating-point division.
local created_ms = 0
if #created_arg > 3 then
  created_ms = tonumber(string.sub(created_arg, 1, -4))
end
local expire_at_ms = created_ms + tonumber(ttl_arg) * 1000
local now = redis.call("TIME")
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if expire_at_ms <= now_ms then
  return {"expired"}
end

-- The fingerprints deposit.lua and transfer.lua compute, from the same function.
local fingerprint
if kind == "deposit" then
  fingerprint = request_fingerprint("deposit", amount_arg)
else
  fingerprint = request_fingerprint("transfer", to_id, amount_arg)
end
redis.call("HSET", KEYS[1], "fingerprint", fingerprint, "outcome", "ok",
  "txn_id", txn_id, "created_at_us", created_arg)
redis.call("PEXPIREAT", KEYS[1], string.format("%d", expire_at_ms))
return {"restored"}
