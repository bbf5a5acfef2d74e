-- read_balance: what GET /api/balance/ shows of one wallet, read only: the posted balance
-- and what the user's pending holds keep of it. A hold expires at expires_at_us exactly and
-- its money is available again from then on, whether or not a script or the sweeper has
-- released it yet (docs/holds.md, "Expiry"): held is held_kopecks less the holds of
-- holds:{b}:<user> that are due. available = balance - held.
--
-- KEYS[1]  user:{b}:<user_id>        hash: balance_kopecks held_kopecks
-- KEYS[2]  holds:{b}:<user_id>       sorted set: the user's holds held_kopecks counts
-- ARGV[1]  user_id                   decimal, 1..15 digits, no leading zero
--
-- Returns  {outcome, balance_kopecks, held_kopecks}, all strings:
--   outcome "ok"                  the wallet's amounts
--   outcome "account_not_found"   no wallet for user_id ("" amounts)
--   outcome "invalid_argument"    KEYS/ARGV fail validation

-- @include bucket
-- @include validate
-- @include holds

local user_id = ARGV[1]
if #KEYS ~= 2 or #ARGV ~= 1 or not valid_id(user_id)
  or KEYS[1] ~= bucket_member_key("user", user_id)
  or KEYS[2] ~= bucket_member_key("holds", user_id) then
  return {"invalid_argument", "", ""}
end
local wallet = wallet_amounts(KEYS[1], user_id)
if not wallet then
  return {"account_not_found", "", ""}
end
local now = redis.call("TIME")
local _, due_sum = due_holds(KEYS[2], now[1] .. string.format("%06d", tonumber(now[2])))
local available = available_kopecks(wallet, due_sum)
return {"ok", string.format("%d", wallet.balance), string.format("%d", wallet.balance - available)}
