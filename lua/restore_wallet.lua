-- restore_wallet: put back one user's wallet with what the ledger gives (`wallet rebuild`,
-- after Redis lost its data): the posted balance, the money the user's pending holds keep
-- as payer (held_kopecks, with the holds:{b}:<user_id> members that make it up) and the money
-- pending holds toward the user will bring (incoming_kopecks); and raise the transaction id
-- counter to at least the start of the epoch the rebuild took; all in one atomic step. So
-- a restored wallet can never be used while txn:seq:{b} could still issue an id that was
-- issued before (one the ledger holds: the writer's ON CONFLICT DO NOTHING would
-- silently drop that transaction; or one acknowledged and lost with Redis), even if a
-- rebuild stops half-way, and held_kopecks always equals the sum of holds:{b}:<user_id>
-- (docs/holds.md). The wallet's amounts and the sorted set are overwritten; txn:seq:{b} is
-- never lowered.
--
-- The holds' hashes and their holds:due:{b} members are put back after every wallet
-- (restore_hold.lua), so that the sweeper never finds a due hold whose payee's
-- incoming_kopecks does not count it yet.
--
-- KEYS[1]  txn:seq:{b}               string: last transaction id issued
-- KEYS[2]  user:{b}:<user_id>        hash: balance_kopecks held_kopecks incoming_kopecks
-- KEYS[3]  holds:{b}:<user_id>       sorted set: member <hold_id>:<to_user_id>:<amount>,
--                                    score expires_at_us (replaced)
-- ARGV[1]  user_id                   decimal, 1..15 digits, no leading zero
-- ARGV[2]  balance_kopecks           decimal, 0 .. 10^15, no leading zero
-- ARGV[3]  epoch_start               decimal, 0 or 1..15 digits: the counter's new floor, the
--                                    start of the epoch taken (above every id issued before)
-- ARGV[4]  held_kopecks              decimal, 0 .. balance: the sum of the holds below
-- ARGV[5]  incoming_kopecks          decimal, 0 .. 10^15 - balance
-- ARGV[6..] the user's pending holds as payer, three each: hold_id, to_user_id,
--                                    amount_kopecks; then expires_at_us as the score:
--                                    four arguments per hold
--
-- Returns  {outcome, txn_seq}, both strings; txn_seq is txn:seq:{b} after the call:
--   outcome "created"           the wallet did not exist
--   outcome "updated"           the wallet existed with another balance, held or incoming
--   outcome "unchanged"         the wallet already had these amounts
--   outcome "invalid_argument"  KEYS/ARGV fail validation, or the amounts do not add up
--                               (nothing written; txn_seq "")

-- @include bucket
-- @include validate

local user_id, balance_arg, floor_arg = ARGV[1], ARGV[2], ARGV[3]
local held_arg, incoming_arg = ARGV[4], ARGV[5]
local FIRST_HOLD_ARG = 6

local function amount_or_zero(s)
  return s == "0" or valid_positive(s, MAX_BALANCE_KOPECKS)
end

if #KEYS ~= 3 or #ARGV < 5 or (#ARGV - 5) % 4 ~= 0 or not valid_id(user_id)
  or not amount_or_zero(balance_arg) or not amount_or_zero(held_arg)
  or not amount_or_zero(incoming_arg)
  or not (floor_arg == "0" or valid_id(floor_arg))
  or KEYS[1] ~= bucket_key("txn:seq") or KEYS[2] ~= bucket_member_key("user", user_id)
  or KEYS[3] ~= bucket_member_key("holds", user_id) then
  return {"invalid_argument", ""}
end
local balance, held, incoming = tonumber(balance_arg), tonumber(held_arg), tonumber(incoming_arg)
if held > balance or balance + incoming > MAX_BALANCE_KOPECKS then
  return {"invalid_argument", ""}
end

-- The holds: each valid, to someone else, and adding up to held_kopecks.
local members, sum = {}, 0
for i = FIRST_HOLD_ARG, #ARGV, 4 do
  local hold_id, to_id, amount_arg, expires_arg = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if not valid_id(hold_id) or not valid_id(to_id) or to_id == user_id
    or not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS)
    or not valid_positive(expires_arg, 9999999999999999) then
    return {"invalid_argument", ""}
  end
  sum = sum + tonumber(amount_arg)
  members[#members + 1] = expires_arg
  members[#members + 1] = hold_id .. ":" .. to_id .. ":" .. amount_arg
end
if sum ~= held then
  return {"invalid_argument", ""}
end

local seq_str = redis.call("GET", KEYS[1])
local seq = 0
if seq_str then
  seq = tonumber(seq_str)
  assert(seq ~= nil and seq >= 0, "invariant: txn:seq is not a number")
end
if tonumber(floor_arg) > seq then
  redis.call("SET", KEYS[1], floor_arg)
  seq_str = floor_arg
elseif not seq_str then
  seq_str = "0"
end

local previous = redis.call("HMGET", KEYS[2], "balance_kopecks", "held_kopecks",
  "incoming_kopecks")
redis.call("HSET", KEYS[2], "balance_kopecks", balance_arg, "held_kopecks", held_arg,
  "incoming_kopecks", incoming_arg)
redis.call("DEL", KEYS[3])
-- ZADD in slices: unpack() of a long list can exceed Lua's stack.
for i = 1, #members, 200 do
  redis.call("ZADD", KEYS[3], unpack(members, i, math.min(i + 199, #members)))
end
if not previous[1] then
  return {"created", seq_str}
elseif previous[1] == balance_arg and (previous[2] or "0") == held_arg
  and (previous[3] or "0") == incoming_arg then
  return {"unchanged", seq_str}
end
return {"updated", seq_str}
