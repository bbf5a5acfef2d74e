-- hold_expire: the sweeper (service/ledger/hold_sweeper.py) marks one hold of holds:due:{b}
-- that has expired, in one atomic step: the payer's side if holds:{b}:<payer> still lists it
-- (held_kopecks, the member and a hold_expired record, exactly as includes/holds.lua's
-- release_holds does when a spending script finds it first), then the payee's side
-- (incoming_kopecks, the holds:due:{b} member), and the hold's status becomes expired. No
-- session, no idempotency key: it is safe to call any number of times, and it never touches
-- a hold that is not due (now < expires_at_us).
--
-- The holds:due:{b} member names the hold, its payer, payee and amount, so that the money is
-- settled even when hold:<id> is gone (its hash lives until expires_at + hold_retention_s;
-- a sweeper stopped longer than that must not leave incoming_kopecks counting it for ever).
--
-- A hold whose payee is in another bucket (ARGV[2] "1"; docs/scaling.md, "Holds across
-- buckets") has its payee's side there, as an expectation: the reply gives its token (from
-- the hash), which the sweeper then aborts on the payee's bucket.
--
-- KEYS[1]  hold:{b}:<hold_id>           hash: the hold (status set to expired if present)
-- KEYS[2]  user:{b}:<from>              hash: the payer's wallet
-- KEYS[3]  holds:{b}:<from>             sorted set: the payer's holds
-- KEYS[4]  holds:due:{b}                sorted set: member <hold_id>:<from>:<to>:<amount>
-- KEYS[5]  txn:stream:{b}               stream
-- KEYS[6]  user:{b}:<to>                iff ARGV[2] is "0": hash: the payee's wallet
-- ARGV[1]  the member of holds:due:{b}  "<hold_id>:<from>:<to>:<amount>"
-- ARGV[2]  across buckets               "1" when the payee is in another bucket, else "0"
--
-- Returns  {outcome, token}:
--   outcome "expired"           the hold was due: its money was released and it is expired;
--                               across buckets, token is its expectation's ("" when the
--                               hash is gone: recovery aborts it by the hold's status)
--   outcome "not_due"           now < expires_at_us: nothing written
--   outcome "gone"          holds:due:{b} does not list it (swept, captured or voided before):
--                               nothing written
--   outcome "not_pending"   holds:due:{b} listed a hold that its hash says ended: the member
--                               was removed, no money touched (it was settled when it ended)
--   outcome "invalid_argument"  KEYS/ARGV fail validation (nothing written)
-- token is "" but for "expired" across buckets.
-- Stream entry fields (only when the payer's side is released here): kind ("hold_expired")
-- hold from to amount created_at_us (now) expires_at_us idem_key ("").

-- @include bucket
-- @include validate
-- @include holds

local member = ARGV[1]
local hold_id, from_id, to_id, amount_arg
if type(member) == "string" then
  hold_id, from_id, to_id, amount_arg = string.match(member, "^(%d+):(%d+):(%d+):(%d+)$")
end
local across = ARGV[2]
if #KEYS ~= (across == "0" and 6 or 5) or #ARGV ~= 2 or (across ~= "0" and across ~= "1")
  or not hold_id or not valid_id(hold_id) or not valid_id(from_id)
  or not valid_id(to_id) or from_id == to_id
  or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
  or KEYS[1] ~= bucket_member_key("hold", hold_id)
  or KEYS[2] ~= bucket_member_key("user", from_id) or KEYS[3] ~= bucket_member_key("holds", from_id)
  or KEYS[4] ~= bucket_key("holds:due") or KEYS[5] ~= bucket_key("txn:stream")
  or (across == "0" and KEYS[6] ~= bucket_member_key("user", to_id)) then
  return {"invalid_argument", ""}
end

local score = redis.call("ZSCORE", KEYS[4], member)
if not score then
  return {"gone", ""}
end
local now = redis.call("TIME")
local now_us = now[1] .. string.format("%06d", tonumber(now[2]))
local expires_at_us = string.format("%d", tonumber(score))
if tonumber(now_us) < tonumber(expires_at_us) then
  return {"not_due", ""}
end
local hold = redis.call("HMGET", KEYS[1], "status", "token")
local status = hold[1]
if status and status ~= "pending" then
  redis.call("ZREM", KEYS[4], member)
  return {"not_pending", ""}
end

local payer_member = hold_id .. ":" .. to_id .. ":" .. amount_arg
local payer_side = redis.call("ZSCORE", KEYS[3], payer_member)
local payer = wallet_amounts(KEYS[2], from_id)
local payee = across == "0" and wallet_amounts(KEYS[6], to_id) or nil
assert(payer and (across == "1" or (payee and payee.incoming >= tonumber(amount_arg)))
  and (not payer_side or payer.held >= tonumber(amount_arg))
  and (across == "0" or not status or hold[2]),
  "invariant: a due hold that its parties' wallets do not count: hold " .. hold_id)

-- Every check has passed: from here on the script only writes.
if payer_side then
  release_holds({{member = payer_member, hold_id = hold_id, to_id = to_id, amount = amount_arg,
                  expires_at_us = expires_at_us}},
                KEYS[3], KEYS[2], KEYS[5], from_id, now_us)
end
if across == "0" then
  redis.call("HINCRBY", KEYS[6], "incoming_kopecks", "-" .. amount_arg)
end
redis.call("ZREM", KEYS[4], member)
if status then
  redis.call("HSET", KEYS[1], "status", "expired")
end
return {"expired", across == "1" and (hold[2] or "") or ""}
