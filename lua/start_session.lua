-- start_session: store a new session and enter it in its user's index, in one atomic
-- step, so that lua/end_sessions.lua finds every session that exists. Entries whose
-- session key is gone (logged out, idle) leave the index here. A user at the cap loses
-- their oldest session: it is ended, not only dropped from the index, because a session
-- the index does not name could not be ended by logout/all.
--
-- The session keys of the index are named by its entries, not passed in KEYS: that holds
-- on a standalone Redis (and with Sentinel), not in a Redis Cluster, where the session
-- keys would need the user's hash tag.
--
-- KEYS[1]  wallet_session:{b}:<token>     string: the new session, aiohttp-session's JSON;
--                                  TTL idle_s (every request gives it back)
-- KEYS[2]  sessions:{b}:<user_id>  sorted set: session id -> login time (unix µs, Redis
--                                  clock); TTL absolute_s from the newest login, the
--                                  longest any session in it can be used (a raised
--                                  absolute timeout also lengthens sessions started
--                                  before it, beyond the TTL their index was given)
-- ARGV[1]  user_id                 decimal, 1..15 digits, no leading zero
-- ARGV[2]  session id              1..64 of A-Z a-z 0-9 _ -
-- ARGV[3]  session                 the JSON to store: {"created": <unix s>, "session": {...}}
-- ARGV[4]  idle_s                  decimal seconds, 1 .. 10^7
-- ARGV[5]  absolute_s              decimal seconds, 1 .. 10^7
-- ARGV[6]  max sessions            decimal, 1 .. 1000: sessions the user may hold at once
--
-- Returns  the number of live sessions ended to make room (0 under the cap);
--          an error reply when KEYS or ARGV fail validation (nothing written).

-- @include bucket
-- @include validate

-- service/settings.py bounds session_max_per_user the same.
local MAX_SESSIONS_PER_USER = 1000

local session_key, index_key = KEYS[1], KEYS[2]
local user_id, session_id, session, idle_arg, absolute_arg, max_arg =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]

if #KEYS ~= 2 or #ARGV ~= 6 or not valid_id(user_id)
  or session_key ~= session_key_of(session_id)
  or index_key ~= bucket_member_key("sessions", user_id)
  or not valid_positive(idle_arg, MAX_TTL_S) or not valid_positive(absolute_arg, MAX_TTL_S)
  or not valid_positive(max_arg, MAX_SESSIONS_PER_USER) then
  return redis.error_reply("start_session: invalid arguments")
end

for _, id in ipairs(redis.call("ZRANGE", index_key, 0, -1)) do
  local key = session_key_of(id)
  if not key or redis.call("EXISTS", key) == 0 then
    redis.call("ZREM", index_key, id)
  end
end

local ended = 0
while redis.call("ZCARD", index_key) >= tonumber(max_arg) do
  local oldest = redis.call("ZPOPMIN", index_key)
  local key = session_key_of(oldest[1])
  if key then
    ended = ended + redis.call("DEL", key)
  end
end

local now = redis.call("TIME")
redis.call("SET", session_key, session, "EX", idle_arg)
-- Microseconds, so that logins in the same second still end oldest first at the cap.
redis.call("ZADD", index_key, now[1] .. string.format("%06d", tonumber(now[2])), session_id)
redis.call("EXPIRE", index_key, absolute_arg)
return ended
