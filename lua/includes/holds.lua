-- holds (included by every money script that spends or credits): a wallet's posted,
-- held and incoming amounts, and the payer's holds that have expired. docs/holds.md
-- gives the design; it needs validate.lua included before it.
--
-- A wallet user:{b}:<id> is a hash:
--   balance_kopecks   posted balance (held money included)
--   held_kopecks    the sum of the user's holds as payer that holds:{b}:<id> still lists
--   incoming_kopecks  the sum of the holds toward the user that holds:due:{b} still lists
-- A missing held or incoming field is 0 (wallets made before holds existed).
--
-- A hold reserves on both sides, as TigerBeetle's pending transfers do: the payer's
-- held_kopecks (so the money cannot be spent twice) and the payee's incoming_kopecks (so
-- that every credit checks balance + incoming + amount <= 10^15, and a capture, the credit
-- that follows the reservation, can never be refused).
--
-- holds:{b}:<payer> is a sorted set of the payer's holds that held_kopecks counts: member
-- "<hold_id>:<to_user_id>:<amount_kopecks>", score expires_at_us. A hold expires at
-- expires_at_us exactly. A script that spends first finds the payer's holds that have
-- expired (due_holds), counts their money as available, and releases them (release_holds)
-- only once every check has passed, so that a refused request writes nothing. The payee's
-- side of an expired hold is released by the sweeper (lua/hold_expire.lua), which keeps
-- the payee's ceiling stricter, never looser, until then.

-- The wallet's amounts, or nil when the wallet does not exist.
local function wallet_amounts(wallet_key, user_id)
  local raw = redis.call("HMGET", wallet_key, "balance_kopecks", "held_kopecks", "incoming_kopecks")
  if not raw[1] then
    return nil
  end
  local wallet = {
    balance = tonumber(raw[1]),
    held = tonumber(raw[2] or "0"),
    incoming = tonumber(raw[3] or "0"),
  }
  assert(wallet.balance ~= nil and wallet.balance >= 0 and wallet.balance <= MAX_BALANCE_KOPECKS
    and wallet.held ~= nil and wallet.held >= 0 and wallet.held <= wallet.balance
    and wallet.incoming ~= nil and wallet.incoming >= 0,
    "invariant: stored amounts out of range for user " .. user_id)
  return wallet
end

-- Lowers the wallet's incoming_kopecks by amount_arg, which it counts: an expectation of a
-- credit from another bucket ended (lua/transfer_credit.lua, lua/transfer_abort.lua). At 0
-- the field goes, as the expectation found it on a wallet that never had one (missing is
-- 0): a request refused across buckets leaves the wallet as it was.
local function drop_incoming(wallet_key, amount_arg)
  if redis.call("HINCRBY", wallet_key, "incoming_kopecks", "-" .. amount_arg) == 0 then
    redis.call("HDEL", wallet_key, "incoming_kopecks")
  end
end

-- Whether a credit of amount (a number) stays within the ceiling, counting what the
-- wallet's pending holds toward it will bring.
local function credit_fits(wallet, amount)
  return wallet.balance + wallet.incoming + amount <= MAX_BALANCE_KOPECKS
end

-- The payer's holds that have expired at now_us (the list, for release_holds) and the sum
-- of their amounts (available again).
local function due_holds(holds_key, now_us)
  local raw = redis.call("ZRANGEBYSCORE", holds_key, "-inf", now_us, "WITHSCORES")
  local due, sum = {}, 0
  for i = 1, #raw, 2 do
    local hold_id, to_id, amount = string.match(raw[i], "^(%d+):(%d+):(%d+)$")
    assert(hold_id, "invariant: malformed member of " .. holds_key)
    due[#due + 1] = {member = raw[i], hold_id = hold_id, to_id = to_id, amount = amount,
                     expires_at_us = string.format("%d", tonumber(raw[i + 1]))}
    sum = sum + tonumber(amount)
  end
  return due, sum
end

-- What the payer may spend: the posted balance less what pending holds keep, where the
-- holds that have expired keep nothing.
local function available_kopecks(wallet, due_sum)
  local available = wallet.balance - wallet.held + due_sum
  assert(available >= 0 and available <= wallet.balance, "invariant: available out of range")
  return available
end

-- Releases the payer's side of the expired holds due_holds found: held_kopecks, the
-- sorted set, and one hold_expired record each. The payee's side stays for the sweeper.
local function release_holds(due, holds_key, wallet_key, stream_key, from_id, now_us)
  for _, hold in ipairs(due) do
    redis.call("ZREM", holds_key, hold.member)
    redis.call("HINCRBY", wallet_key, "held_kopecks", "-" .. hold.amount)
    redis.call("XADD", stream_key, "*",
      "kind", "hold_expired", "hold", hold.hold_id, "from", from_id, "to", hold.to_id,
      "amount", hold.amount, "created_at_us", now_us, "expires_at_us", hold.expires_at_us,
      "idem_key", "")
  end
end
