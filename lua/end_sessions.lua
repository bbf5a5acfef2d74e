-- end_sessions: end every session of a user at once (logout/all, a password change):
-- delete each session key the user's index names, and the index, in one atomic step.
--
-- Why this is enough on every process at once: the money scripts check the session key
-- in the same atomic step that moves money, and Redis runs scripts one at a time, so a
-- deposit or transfer runs wholly before this script or finds its session gone, whatever
-- the API process has cached. Reads load the session key (GETEX) before they read
-- anything, so a read that starts after this script is refused too. A session is stored
-- only by lua/start_session.lua, which enters it in the index in the same step, and is
-- never written again, so no session this script ended can come back.
--
-- The session keys are named by the index's entries, not passed in KEYS: that holds on a
-- standalone Redis (and with Sentinel), not in a Redis Cluster (see start_session.lua).
--
-- KEYS[1]  sessions:{b}:<user_id>   sorted set: session id -> login time in µs
--                                 (start_session.lua)
-- ARGV     none
--
-- Returns  the number of session keys deleted (sessions that were still alive);
--          an error reply when KEYS or ARGV fail validation (nothing written).

-- @include bucket
-- @include validate

if #KEYS ~= 1 or #ARGV ~= 0 or type(KEYS[1]) ~= "string"
  or not valid_id(string.match(KEYS[1], "^sessions:{b%d+}:(%d+)$")) then
  return redis.error_reply("end_sessions: one sessions:{b<bucket>}:<user_id> key expected")
end

local ended = 0
for _, id in ipairs(redis.call("ZRANGE", KEYS[1], 0, -1)) do
  local session_key = session_key_of(id)
  if session_key then
    ended = ended + redis.call("DEL", session_key)
  end
end
redis.call("DEL", KEYS[1])
return ended
