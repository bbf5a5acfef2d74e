-- restore_wallet: put back one user's wallet with the balance the ledger gives
-- (`wallet rebuild`, after Redis lost its data) and raise the transaction id
-- counter to at least the start of the epoch the rebuild took, in one atomic step. So
-- a restored wallet can never be used while txn:seq could still issue an id that was
-- issued before (one the ledger holds: the writer's ON CONFLICT DO NOTHING would
-- silently drop that transaction; or one acknowledged and lost with Redis), even if a
-- rebuild stops half-way. The balance is overwritten; txn:seq is never lowered.
--
-- KEYS[1]  txn:seq                   string: last transaction id issued
-- KEYS[2]  user:{<user_id>}          hash: balance_kopecks
-- ARGV[1]  user_id                   decimal, 1..15 digits, no leading zero
-- ARGV[2]  balance_kopecks           decimal, 0 .. 10^15, no leading zero
-- ARGV[3]  epoch_start               decimal, 0 or 1..15 digits: the counter's new floor, the
--                                    start of the epoch taken (above every id issued before)
--
-- Returns  {outcome, txn_seq}, both strings; txn_seq is txn:seq after the call:
--   outcome "created"           the wallet did not exist
--   outcome "updated"           the wallet existed with another balance
--   outcome "unchanged"         the wallet already had this balance
--   outcome "invalid_argument"  KEYS/ARGV fail validation (nothing written; txn_seq "")

-- @include validate

local user_id, balance_arg, floor_arg = ARGV[1], ARGV[2], ARGV[3]

if #KEYS ~= 2 or #ARGV ~= 3 or not valid_id(user_id)
  or type(balance_arg) ~= "string" or #balance_arg > 16
  or not (balance_arg == "0" or string.match(balance_arg, "^[1-9]%d*$"))
  or not (floor_arg == "0" or valid_id(floor_arg))
  or KEYS[1] ~= "txn:seq" or KEYS[2] ~= "user:{" .. user_id .. "}" then
  return {"invalid_argument", ""}
end
if tonumber(balance_arg) > MAX_BALANCE_KOPECKS then
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

local previous = redis.call("HGET", KEYS[2], "balance_kopecks")
redis.call("HSET", KEYS[2], "balance_kopecks", balance_arg)
if not previous then
  return {"created", seq_str}
elseif previous == balance_arg then
  return {"unchanged", seq_str}
end
return {"updated", seq_str}
