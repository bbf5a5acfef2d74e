-- reconcile_snapshot: what `wallet reconcile` compares with the ledger, read in one atomic
-- step, so that it is exactly the result of the stream's entries up to the last one then:
-- some wallets' amounts, some refunded totals, the id counter, the stream's last entry id,
-- the holds:due:{b} members already due, the money in transit from the bucket and the
-- credits the bucket expects (transfers across buckets: docs/scaling.md). Read only.
--
-- KEYS[1]  txn:seq:{b}               string
-- KEYS[2]  txn:stream:{b}            stream (its last-generated-id, kept by Redis even when
--                                    the entries themselves were trimmed)
-- KEYS[3]  holds:due:{b}             sorted set
-- KEYS[4]  inbound:due:{b}           sorted set: member <to_user_id>:<token>, one per credit
--                                    expected (the credit and the abort remove it)
-- KEYS[5]  transit:{b}               string: the reservations not ended yet
-- KEYS[6..5+n]  user:{b}:<id>        hash: balance_kopecks held_kopecks incoming_kopecks
-- KEYS[6+n..]   refunded:{b}:<id>:<txn_id>  string
-- ARGV[1]  n                         decimal, the number of wallets among KEYS
-- ARGV[2]  "1": read what wallets are compared with: the holds:due:{b} members due now
--          (score <= now) and the credits expected; "0": neither
--
-- Returns  {txn_seq, last_entry_id, now_us, due, wallets, refunded, transit, expected}:
--   txn_seq        "0" when missing
--   last_entry_id  "0-0" when the stream does not exist
--   due            {member, score, member, score, ...}
--   wallets        three per wallet: balance_kopecks, held_kopecks, incoming_kopecks, each
--                  false (nil) when missing
--   refunded       one per refunded key, false (nil) when missing
--   transit        "0" when missing
--   expected       {to_user_id, amount_kopecks, ...}: the headroom each expectation keeps
--                  in its payee's incoming_kopecks (inbound:{b}:<to>:<token>, read by name:
--                  of this bucket, so of this slot)
--   {"record_missing"} when an expectation's record is not on this node (a slot being moved:
--   read it again later)
--   {"invalid_argument"} when KEYS/ARGV fail validation.

-- @include bucket

local count_arg, due_flag = ARGV[1], ARGV[2]
if #ARGV ~= 2 or type(count_arg) ~= "string" or not string.match(count_arg, "^%d+$")
  or #count_arg > 6 or (due_flag ~= "0" and due_flag ~= "1")
  or KEYS[1] ~= bucket_key("txn:seq") or KEYS[2] ~= bucket_key("txn:stream")
  or KEYS[3] ~= bucket_key("holds:due") or KEYS[4] ~= bucket_key("inbound:due")
  or KEYS[5] ~= bucket_key("transit")
  or #KEYS < 5 + tonumber(count_arg) then
  return {"invalid_argument"}
end
local wallet_count = tonumber(count_arg)
for i = 6, #KEYS do
  local kind, rest = string.match(KEYS[i], "^([a-z]+):{b%d+}:([1-9][%d:]*)$")
  local wanted = i <= 5 + wallet_count and "user" or "refunded"
  if kind ~= wanted or KEYS[i] ~= bucket_member_key(kind, rest)
    or not string.match(rest, kind == "user" and "^[1-9]%d*$" or "^[1-9]%d*:[1-9]%d*$") then
    return {"invalid_argument"}
  end
end

local seq = redis.call("GET", KEYS[1]) or "0"
local last_entry_id = "0-0"
if redis.call("EXISTS", KEYS[2]) == 1 then
  local info = redis.call("XINFO", "STREAM", KEYS[2])
  for i = 1, #info, 2 do
    if info[i] == "last-generated-id" then
      last_entry_id = info[i + 1]
    end
  end
end
local now = redis.call("TIME")
local now_us = now[1] .. string.format("%06d", tonumber(now[2]))

local due = {}
local expected = {}
if due_flag == "1" then
  due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now_us, "WITHSCORES")
  for _, member in ipairs(redis.call("ZRANGE", KEYS[4], 0, -1)) do
    -- Read by name: of this bucket, so of this slot; but while the slot is being moved the
    -- record may be on the other node already.
    local amount = redis.call("HGET", bucket_member_key("inbound", member), "amount")
    if not amount then
      return {"record_missing"}
    end
    expected[#expected + 1] = string.match(member, "^(%d+):")
    expected[#expected + 1] = amount
  end
end
local wallets = {}
for i = 6, 5 + wallet_count do
  local raw = redis.call("HMGET", KEYS[i], "balance_kopecks", "held_kopecks", "incoming_kopecks")
  wallets[#wallets + 1] = raw[1]
  wallets[#wallets + 1] = raw[2]
  wallets[#wallets + 1] = raw[3]
end
local refunded = {}
for i = 6 + wallet_count, #KEYS do
  refunded[#refunded + 1] = redis.call("GET", KEYS[i])
end
local transit = redis.call("GET", KEYS[5]) or "0"
return {seq, last_entry_id, now_us, due, wallets, refunded, transit, expected}
