-- transfer_credit: the credit of a transfer across buckets, on the payee's bucket, after the
-- reservation on the payer's (docs/scaling.md, "Across buckets"). Exactly once: the record
-- inbound:{b}:<to>:<token> that lua/transfer_expect.lua wrote decides. Expected: the payee's
-- balance grows by the amount, which the expectation checked against the ceiling and kept
-- in incoming_kopecks (a refund's may be less than expected: all that was left, which a
-- concurrent refund lowered; a hold's capture less than the hold; the whole expected amount
-- leaves incoming_kopecks), so nothing
-- can refuse it; the record becomes applied with the transaction's id and the amount
-- credited, and a transfer_in record is appended to this bucket's stream.
-- Applied with this id: only the record's expiry is written again (a retry; the write is
-- what makes the caller's wait for the replicas cover the credit). Aborted: nothing is written, and the
-- transfer is voided on the payer's bucket. Gone (never written on this node, as after a
-- failover that lost it, or ended longer ago than it is kept): nothing is written; the
-- caller decides (service/redis/crossing.py).
--
-- KEYS[1]  txn:stream:{b}                 stream
-- KEYS[2]  user:{b}:<to_user_id>          hash: balance_kopecks (raised), incoming_kopecks
--                                         (lowered)
-- KEYS[3]  inbound:{b}:<to_user_id>:<token>  hash: state amount txn_id created_at_us
-- KEYS[4]  inbound:due:{b}                sorted set: member <to_user_id>:<token>
-- KEYS[5]  txn:clock:{b}                  string: the bucket's last stamp, microseconds
-- ARGV[1]  to_user_id                     decimal, 1..15 digits, no leading zero
-- ARGV[2]  request token                  the token the expectation was written under
-- ARGV[3]  txn_id                         decimal: the id the payer's bucket gave the transfer
-- ARGV[4]  from_user_id                   decimal: the payer
-- ARGV[5]  amount_kopecks                 decimal, 1 .. 10^12: the amount expected; a
--                                         refund's at most that (lua/refund.lua)
-- ARGV[6]  retention_s                    decimal seconds, 1 .. 10^7: how long the record is
--                                         kept once applied (a late credit must find it)
-- ARGV[7]  refund_of                      decimal: the transfer a refund across buckets
--                                         refunds, or "" for a transfer
-- ARGV[8]  hold_id                        decimal: the hold a capture across buckets
--                                         captures (lua/hold_capture_across.lua), or ""
--
-- Returns  {outcome, created_at_us, to_balance_kopecks}:
--   "applied"            the payee has the money (now, or by an earlier call with this
--                        txn_id); created_at_us is when it was credited, by this bucket's
--                        clock; to_balance_kopecks is "" for an earlier call's
--   "aborted"            the fence was set first: nothing written
--   "gone"               no record: nothing written
--   "invalid_argument"   KEYS/ARGV fail validation, or the record is of another transfer
--                        (nothing written)
-- Stream entry fields: id kind ("transfer_in") from to amount created_at_us to_balance, and
-- refund_of iff ARGV[7] is not "", hold_id iff ARGV[8] is not "".

-- @include bucket
-- @include validate
-- @include stamp
-- @include holds

local to_id, token, txn_id, from_id, amount_arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local retention_arg, refund_of, hold_id = ARGV[6], ARGV[7], ARGV[8]
if #KEYS ~= 5 or #ARGV ~= 8 or not valid_id(to_id) or not valid_request_token(token)
  or not valid_id(txn_id) or not valid_id(from_id) or from_id == to_id
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or not valid_positive(retention_arg, MAX_TTL_S)
  or (refund_of ~= "" and not valid_id(refund_of)) or (hold_id ~= "" and not valid_id(hold_id))
  or (refund_of ~= "" and hold_id ~= "")
  or KEYS[1] ~= bucket_key("txn:stream") or KEYS[2] ~= bucket_member_key("user", to_id)
  or KEYS[3] ~= bucket_member_key("inbound", to_id) .. ":" .. token
  or KEYS[4] ~= bucket_key("inbound:due") or KEYS[5] ~= bucket_key("txn:clock") then
  return {"invalid_argument", "", ""}
end

local record = redis.call("HMGET", KEYS[3], "state", "amount", "txn_id", "created_at_us")
local state = record[1]
if state == "applied" then
  if record[3] ~= txn_id then
    return {"invalid_argument", "", ""}
  end
  -- Written again: the caller's wait for the replicas covers only its own connection's
  -- writes, and the credit may be another connection's that the replicas do not have yet.
  redis.call("EXPIRE", KEYS[3], retention_arg)
  return {"applied", record[4], ""}
end
if not state then
  return {"gone", "", ""}
end
if state ~= "expected" then
  return {"aborted", "", ""}
end
local expected = tonumber(record[2])
if tonumber(amount_arg) > expected
  or (refund_of == "" and hold_id == "" and record[2] ~= amount_arg) then
  return {"invalid_argument", "", ""}
end

local payee = wallet_amounts(KEYS[2], to_id)
assert(payee and payee.incoming >= expected
  and payee.balance + payee.incoming <= MAX_BALANCE_KOPECKS,
  "invariant: an expected credit is kept in the payee's incoming_kopecks")
local stamp = string.format("%d", stamp_past_clock(KEYS[5], redis.call("TIME")))
redis.call("SET", KEYS[5], stamp)
drop_incoming(KEYS[2], record[2])
local to_balance = string.format("%d", redis.call("HINCRBY", KEYS[2], "balance_kopecks", amount_arg))
redis.call("HSET", KEYS[3], "state", "applied", "txn_id", txn_id, "created_at_us", stamp,
  "amount", amount_arg)
redis.call("EXPIRE", KEYS[3], retention_arg)
redis.call("ZREM", KEYS[4], to_id .. ":" .. token)
local entry = {"id", txn_id, "kind", "transfer_in", "from", from_id, "to", to_id,
  "amount", amount_arg, "created_at_us", stamp, "to_balance", to_balance}
if refund_of ~= "" then
  entry[#entry + 1], entry[#entry + 2] = "refund_of", refund_of
end
if hold_id ~= "" then
  entry[#entry + 1], entry[#entry + 2] = "hold_id", hold_id
end
redis.call("XADD", KEYS[1], "*", unpack(entry))
return {"applied", stamp, to_balance}
