-- idempotency (included by the money scripts): the record kept under an idempotency
-- key, so that a retried request gets the first answer again instead of moving money
-- a second time.
--
-- A money script answers {outcome, <reply fields>..., replayed}, all strings, replayed
-- ("1" or "0") last. The record is a hash under idem:{b}:<user_id>:<key>: fingerprint,
-- outcome, and one field per reply field, under the name the script gives it (deposit
-- and transfer: txn_id, created_at_us). Fields named by the script, rather than one
-- encoded reply, keep records already stored, and the ones restore_idempotency.lua
-- writes, readable as they are, and let a later script record a reply of another shape
-- (a batch's txn ids in one field, say) without a change here.
--
-- Which outcomes are remembered is the script's choice: those a retry must get again
-- (money moved, or a refusal that depended on balances and accounts at the time). Not
-- those a retry may well get past: invalid_argument, unauthorized, not_rebuilt,
-- account_not_found, a validation refusal, and idempotency_key_reused itself.

-- The idempotency record of one request. key: its idem: key, or nil when the request
-- has none (idempotency_lookup then finds nothing and idempotency_remember writes
-- nothing). ttl_s: decimal seconds. fingerprints: request_fingerprint(...) of the request,
-- in every form it may have been recorded under; the first is the one recorded now.
-- (A transfer to a username has two: by the id the name resolves to, and by the name, as
-- a refusal recorded while the name resolved to no one stores it.)
-- reply_fields: the names of the script's reply fields between outcome and replayed.
local function idempotency_record(key, ttl_s, fingerprints, reply_fields)
  return {key = key, ttl_s = ttl_s, fingerprints = fingerprints, reply_fields = reply_fields}
end

local function is_one_of(value, list)
  for _, item in ipairs(list) do
    if value == item then
      return true
    end
  end
  return false
end

-- nil when the key has no record yet: go on with the request. Otherwise the reply to
-- give: the recorded one with replayed = "1" (a field the record lacks reads as ""), or,
-- when the record is of another request, "idempotency_key_reused" with empty fields.
local function idempotency_lookup(record)
  if not record.key then
    return nil
  end
  local fields = record.reply_fields
  local seen = redis.call("HMGET", record.key, "fingerprint", "outcome", unpack(fields))
  if not seen[1] then
    return nil
  end
  local reply = {}
  if not is_one_of(seen[1], record.fingerprints) then
    reply[1] = "idempotency_key_reused"
    for i = 1, #fields do
      reply[i + 1] = ""
    end
    reply[#fields + 2] = "0"
    return reply
  end
  reply[1] = seen[2]
  for i = 1, #fields do
    reply[i + 1] = seen[i + 2] or ""
  end
  reply[#fields + 2] = "1"
  return reply
end

-- Records reply ({outcome, <reply fields>..., "0"}) under the key for ttl_s
-- and returns it unchanged, so that a script writes `return idempotency_remember(...)`
-- and what is recorded is exactly what was answered. Every entry must be a string: this
-- runs after the money moved, where a Lua error would leave the move unrecorded.
local function idempotency_remember(record, reply)
  if record.key then
    local hash = {"fingerprint", record.fingerprints[1], "outcome", reply[1]}
    for i, name in ipairs(record.reply_fields) do
      hash[#hash + 1] = name
      hash[#hash + 1] = reply[i + 1]
    end
    redis.call("HSET", record.key, unpack(hash))
    redis.call("EXPIRE", record.key, record.ttl_s)
  end
  return reply
end
