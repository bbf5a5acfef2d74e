-- recipient_misses (included by the scripts of payments that name their recipients:
-- transfer, transfer_batch, hold_create; after validate): a user whose payments keep naming
-- no one is probing for ids or names. Past `limit` first answers of recipient_not_found in
-- a fixed window (which starts with the first of them), the user's payments are refused
-- whatever their recipient, so that 404 and 409 tell nothing apart, until the window ends.
-- The same counter as lua/fixed_window_limit.lua keeps (service/auth/window_limit.py reads
-- it for Retry-After), checked here in the payment's own step rather than in a round trip
-- before it.
--
-- The key is throttle:recipient-misses:{b}:<user_id>: a string with a TTL, the misses counted.

-- The key, the limit (1 .. 10^9 misses) and the window (1 .. 10^12 ms), as given.
local function valid_recipient_misses(key, user_id, limit_arg, window_ms_arg)
  return key == bucket_member_key("throttle:recipient-misses", user_id)
    and valid_positive(limit_arg, 1000000000) and valid_positive(window_ms_arg, 1000000000000)
end

-- When the user is refused for now (the limit is reached in the current window): the ms
-- until the window ends, as a decimal string (the caller's Retry-After); else nil.
local function recipient_misses_wait_ms(key, limit_arg)
  if (tonumber(redis.call("GET", key)) or 0) < tonumber(limit_arg) then
    return nil
  end
  return string.format("%d", math.max(redis.call("PTTL", key), 1))
end

-- Counts one first answer of recipient_not_found; nothing is written past the limit, so a
-- refused client cannot make Redis hold more.
local function count_recipient_miss(key, limit_arg, window_ms_arg)
  if recipient_misses_wait_ms(key, limit_arg) then
    return
  end
  if redis.call("INCR", key) == 1 then
    redis.call("PEXPIRE", key, window_ms_arg)
  end
end
