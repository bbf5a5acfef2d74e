-- check_session (included by the money scripts): is session_key a live session of
-- user_id? A session is aiohttp-session's JSON {"created": <unix s>, "session":
-- {"user_id": <id>, ...}} as service/sessions.py stores it; the key's TTL is the
-- idle timeout. A live session gets its idle TTL back (the request is activity).

local function valid_session_key(s)
  return type(s) == "string" and #s <= 128 and string.match(s, "^wallet_session_[%w_%-]+$") ~= nil
end

local function check_session(session_key, user_id, absolute_s, idle_s, now_s)
  local raw = redis.call("GET", session_key)
  if not raw then
    return false
  end
  local ok, data = pcall(cjson.decode, raw)
  if not ok or type(data) ~= "table" or type(data.session) ~= "table"
    or type(data.created) ~= "number" or data.session.user_id ~= tonumber(user_id)
    or now_s - data.created > absolute_s then
    return false
  end
  redis.call("EXPIRE", session_key, idle_s)
  return true
end
