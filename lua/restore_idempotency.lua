-- restore_idempotency: put back the idempotency record of one accepted operation from the
-- ledger (`wallet rebuild`), so that a retry with the same key replays it instead of
-- moving money again, and another request with the key is refused as
-- idempotency_key_reused. The record is the one the live script wrote
-- (includes/idempotency.lua): the same fingerprint, outcome "ok" and the script's reply
-- fields under their names; it expires ttl_s after the instant the live script wrote it
-- (not ttl_s after the rebuild). A record Redis still holds under the key is kept as it is.
--
-- The fingerprint is built here from the ledger's facts with includes/fingerprint.lua, as
-- the live script builds it. Where the facts allow two (a capture or a refund of "all"
-- versus the same amount named), the ledger keeps the one recorded (stream field idem_fp,
-- column idempotency_fingerprint) and passes it as ARGV[6]; it must be one the live
-- script could have recorded for these facts. Without it the first form below is used.
--
-- KEYS[1]  idem:{b}:<user_id>:<key>  hash: fingerprint outcome <the kind's reply fields>
-- ARGV[1]  user_id                   the key's owner: the acting user of the operation
-- ARGV[2]  idempotency key           1..64 printable ASCII
-- ARGV[3]  kind                      deposit | transfer | batch | hold | capture | void | refund
-- ARGV[4]  recorded_at_us            decimal microseconds: when the live script recorded it
--                                    (the operation's instant: a void's, not its hold's)
-- ARGV[5]  ttl_s                     decimal seconds, 1 .. 10^7
-- ARGV[6]  fingerprint               as the ledger kept it, or "" to build it from the facts
-- ARGV[7..] the kind's facts (all decimal), the record's fields, the fingerprints:
--   deposit   txn_id created_at_us amount            txn_id created_at_us
--                                                    "deposit:<amount>"
--   transfer  txn_id created_at_us to amount         txn_id created_at_us
--                                                    "transfer:<to>:<amount>"
--   batch     txn_id (the first leg's) created_at_us n, then to amount per leg in id order
--                                                    txn_id created_at_us leg ("")
--                                                    "batch:<sha1 of <to>=<amount>,...>"
--   hold      hold_id created_at_us expires_at_us to amount
--                                                    txn_id (the hold id) created_at_us
--                                                    expires_at_us
--                                                    "hold:<to>:<amount>:<expires_in_s>"
--   capture   txn_id created_at_us hold_id payer amount (captured)
--                                                    txn_id created_at_us from amount
--                                                    "capture:<hold_id>:<amount>" or ":all"
--   void      hold_id payer amount created_at_us expires_at_us (the hold's)
--                                                    from amount created_at_us expires_at_us
--                                                    "void:<hold_id>"
--   refund    txn_id created_at_us refund_of amount  txn_id created_at_us amount
--                                                    "refund:<refund_of>:<amount>" or ":all"
--
-- Returns  {outcome}:
--   outcome "restored"              the record was written, expiring at recorded_at + ttl_s
--   outcome "exists"                Redis already holds a record under the key (unchanged)
--   outcome "expired"               recorded_at + ttl_s has passed (nothing written)
--   outcome "fingerprint_mismatch"  ARGV[6] is no fingerprint the live script could have
--                                   recorded for these facts (nothing written)
--   outcome "invalid_argument"      KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate
-- @include fingerprint

local MAX_US = 9999999999999999
local MAX_LEGS = 100  -- service/domain/limits.py MAX_BATCH_LEGS
local MIN_EXPIRES_IN_S, MAX_EXPIRES_IN_S = 60, 604800  -- hold_create.lua

local user_id, idem_key, kind, recorded_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local ttl_arg, kept = ARGV[5], ARGV[6]
local facts = {}
for i = 7, #ARGV do
  facts[#facts + 1] = ARGV[i]
end

local function invalid()
  return {"invalid_argument"}
end

if #KEYS ~= 1 or #ARGV < 6 or not valid_id(user_id) or not valid_idempotency_key(idem_key)
  or not valid_positive(recorded_arg, MAX_US) or not valid_positive(ttl_arg, MAX_TTL_S)
  or type(kept) ~= "string" or #kept > 64
  or KEYS[1] ~= bucket_member_key("idem", user_id) .. ":" .. idem_key then
  return invalid()
end

local function instant(s)
  return valid_positive(s, MAX_US)
end
local function amount(s)
  return valid_positive(s, MAX_AMOUNT_KOPECKS)
end
local function other_user(s)
  return valid_id(s) and s ~= user_id
end

-- What the live script may have recorded (the first: what it records when the facts alone
-- decide), and the record's reply fields as name/value pairs.
local candidates, fields
local f = facts
if kind == "deposit" then
  if #f ~= 3 or not valid_id(f[1]) or not instant(f[2]) or not amount(f[3]) then
    return invalid()
  end
  candidates = {request_fingerprint("deposit", f[3])}
  fields = {"txn_id", f[1], "created_at_us", f[2]}
elseif kind == "transfer" then
  if #f ~= 4 or not valid_id(f[1]) or not instant(f[2]) or not other_user(f[3])
    or not amount(f[4]) then
    return invalid()
  end
  candidates = {request_fingerprint("transfer", f[3], f[4])}
  fields = {"txn_id", f[1], "created_at_us", f[2]}
elseif kind == "batch" then
  if #f < 5 or not valid_id(f[1]) or not instant(f[2]) or not valid_positive(f[3], MAX_LEGS)
    or #f ~= 3 + 2 * tonumber(f[3]) then
    return invalid()
  end
  -- By id, in leg order: what transfer_batch.lua records for a batch that moved money.
  local legs = {}
  for i = 4, #f, 2 do
    if not other_user(f[i]) or not amount(f[i + 1]) then
      return invalid()
    end
    legs[#legs + 1] = f[i] .. "=" .. f[i + 1]
  end
  candidates = {request_fingerprint("batch", redis.sha1hex(table.concat(legs, ",")))}
  fields = {"txn_id", f[1], "created_at_us", f[2], "leg", ""}
elseif kind == "hold" then
  if #f ~= 5 or not valid_id(f[1]) or not instant(f[2]) or not instant(f[3])
    or not other_user(f[4]) or not amount(f[5]) then
    return invalid()
  end
  -- hold_create.lua sets expires_at_us = created_at_us + expires_in_s * 10^6 exactly.
  local lasts_us = tonumber(f[3]) - tonumber(f[2])
  if lasts_us % 1000000 ~= 0 or lasts_us < MIN_EXPIRES_IN_S * 1000000
    or lasts_us > MAX_EXPIRES_IN_S * 1000000 then
    return invalid()
  end
  candidates = {request_fingerprint("hold", f[4], f[5], string.format("%d", lasts_us / 1000000))}
  fields = {"txn_id", f[1], "created_at_us", f[2], "expires_at_us", f[3]}
elseif kind == "capture" then
  if #f ~= 5 or not valid_id(f[1]) or not instant(f[2]) or not valid_id(f[3])
    or not other_user(f[4]) or not amount(f[5]) then
    return invalid()
  end
  candidates = {request_fingerprint("capture", f[3], f[5]), request_fingerprint("capture", f[3], "all")}
  fields = {"txn_id", f[1], "created_at_us", f[2], "from", f[4], "amount", f[5]}
elseif kind == "void" then
  if #f ~= 5 or not valid_id(f[1]) or not other_user(f[2]) or not amount(f[3])
    or not instant(f[4]) or not instant(f[5]) then
    return invalid()
  end
  candidates = {request_fingerprint("void", f[1])}
  fields = {"from", f[2], "amount", f[3], "created_at_us", f[4], "expires_at_us", f[5]}
elseif kind == "refund" then
  if #f ~= 4 or not valid_id(f[1]) or not instant(f[2]) or not valid_id(f[3])
    or not amount(f[4]) then
    return invalid()
  end
  candidates = {request_fingerprint("refund", f[3], f[4]), request_fingerprint("refund", f[3], "all")}
  fields = {"txn_id", f[1], "created_at_us", f[2], "amount", f[4]}
else
  return invalid()
end

local fingerprint = candidates[1]
if kept ~= "" then
  local known = false
  for _, candidate in ipairs(candidates) do
    known = known or candidate == kept
  end
  if not known then
    return {"fingerprint_mismatch"}
  end
  fingerprint = kept
end

if redis.call("EXISTS", KEYS[1]) == 1 then
  return {"exists"}
end

-- Milliseconds by dropping the last three digits: exact, no floating-point division.
local recorded_ms = 0
if #recorded_arg > 3 then
  recorded_ms = tonumber(string.sub(recorded_arg, 1, -4))
end
local expire_at_ms = recorded_ms + tonumber(ttl_arg) * 1000
local now = redis.call("TIME")
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
if expire_at_ms <= now_ms then
  return {"expired"}
end

redis.call("HSET", KEYS[1], "fingerprint", fingerprint, "outcome", "ok", unpack(fields))
redis.call("PEXPIREAT", KEYS[1], string.format("%d", expire_at_ms))
return {"restored"}
