-- validate (included by the money scripts): limits and argument shapes.
-- Every value arrives as a string; these accept only canonical decimals.

local MAX_AMOUNT_KOPECKS = 1000000000000        -- 10^12
local MAX_BALANCE_KOPECKS = 1000000000000000    -- 10^15, exact in a Lua double
local MAX_TTL_S = 10000000
-- Transaction ids come in epochs of this many (service/domain/limits.py).
local TXN_IDS_PER_EPOCH = 1000000000            -- 10^9

-- A user id: 1..15 digits, no leading zero.
local function valid_id(s)
  return type(s) == "string" and #s <= 15 and string.match(s, "^[1-9]%d*$") ~= nil
end

-- The start of an epoch of transaction ids: an id's shape, a multiple of TXN_IDS_PER_EPOCH.
local function valid_epoch_start(s)
  return valid_id(s) and tonumber(s) % TXN_IDS_PER_EPOCH == 0
end

-- A positive decimal with no leading zero, at most `max`.
local function valid_positive(s, max)
  return type(s) == "string" and #s <= 16 and string.match(s, "^[1-9]%d*$") ~= nil
    and tonumber(s) <= max
end

-- An idempotency key: 1..64 printable ASCII.
local function valid_idempotency_key(s)
  return type(s) == "string" and #s >= 1 and #s <= 64 and not string.find(s, "[^\32-\126]")
end

-- A username as sign-up accepts it: 3..32 of A-Z a-z 0-9 _ . - (service/domain/limits.py).
local function valid_username(s)
  return type(s) == "string" and #s >= 3 and #s <= 32 and string.match(s, "^[%w_%.%-]+$") ~= nil
end

-- A request token (service/redis/money.py): 16..64 of A-Z a-z 0-9 _ -.
local function valid_request_token(s)
  return type(s) == "string" and #s >= 16 and #s <= 64 and string.match(s, "^[%w_%-]+$") ~= nil
end
