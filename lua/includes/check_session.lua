-- check_session (included by the money scripts): is session_key a live session of
-- user_id? A session is aiohttp-session's JSON {"created": <unix s>, "session":
-- {"user_id": <id>, ...}} as service/sessions.py stores it; the key's TTL is the
-- idle timeout. A live session gets its idle TTL back (the request is activity).
-- refusal_before_money puts it together with the counter checks, in the order both
-- money scripts need; it needs validate.lua included before it.

-- A session key of the call's bucket (includes/bucket.lua, included before this).
local function valid_session_key(s)
  local token = type(s) == "string" and #s <= 128
    and string.match(s, "^wallet_session:{b%d+}:([%w_%-]+)$")
  return token and s == bucket_member_key("wallet_session", token) or false
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

-- What refuses a deposit or transfer before anything else is looked at: the session
-- (when the caller asked for one to be checked), then the transaction id counter. A
-- missing counter means Redis lost its data and was not rebuilt from the ledger yet:
-- an id issued now could collide with one issued before the loss (`wallet rebuild`
-- starts it again in a new epoch). A counter at the last id of its epoch issues no more:
-- the next epoch may be another counter's (TXN_IDS_PER_EPOCH, from validate.lua, which
-- the script includes first; `wallet rebuild` takes a new one). Returns the outcome to
-- answer with, or nil.
local function refusal_before_money(session_key, user_id, absolute_s, idle_s, now_s, seq_key)
  if session_key and not check_session(session_key, user_id, absolute_s, idle_s, now_s) then
    return "unauthorized"
  end
  local seq = redis.call("GET", seq_key)
  if not seq then
    return "not_rebuilt"
  end
  if (tonumber(seq) + 1) % TXN_IDS_PER_EPOCH == 0 then
    return "epoch_exhausted"
  end
  return nil
end
