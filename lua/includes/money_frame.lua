-- money_frame (included by every money script, after validate, check_session and stamp): the
-- frame every money call shares around its own arguments.
--
-- KEYS begin with txn:seq:{b}, txn:stream:{b}, the acting user's wallet user:{b}:<id> and the
-- request token's record req:{b}:<id>:<token>; then the script's own keys; then the
-- bucket's clock txn:clock:{b}; then the Idempotency-Key's record idem:{b}:<id>:<key> and
-- the session, each only when given ({b}: the call's bucket tag, includes/bucket.lua). ARGV
-- carry, besides the script's own: the key ("" for none) and its TTL, the session check ("1"
-- or "0", absolute and idle seconds), the request token and how long its outcome is kept.

-- The frame of one call. own_key_count: the keys before the clock (the four above and the
-- script's own). frame.valid tells whether the frame's KEYS and ARGV are well formed (the
-- script checks its own besides); frame.clock_index is the clock's index;
-- frame.idem_index and frame.session_index are the indexes of the optional keys, nil when
-- absent. Every argument may be nil (a call with too few ARGV): the checks then fail before
-- any is used.
local function money_frame(user_id, idem_key, ttl_arg, session_flag, absolute_arg, idle_arg,
                           token, outcome_ttl_arg, own_key_count)
  local frame = {user_id = user_id, absolute_arg = absolute_arg, idle_arg = idle_arg,
                 has_key = idem_key ~= "", has_session = session_flag == "1"}
  local key_count = own_key_count + 1
  frame.clock_index = key_count
  if frame.has_key then
    key_count = key_count + 1
    frame.idem_index = key_count
  end
  if frame.has_session then
    key_count = key_count + 1
    frame.session_index = key_count
  end
  frame.valid = valid_id(user_id) and valid_positive(ttl_arg, MAX_TTL_S)
    and (session_flag == "1" or session_flag == "0")
    and valid_positive(absolute_arg, MAX_TTL_S) and valid_positive(idle_arg, MAX_TTL_S)
    and valid_request_token(token) and valid_positive(outcome_ttl_arg, MAX_TTL_S)
    and #KEYS == key_count
    and KEYS[1] == bucket_key("txn:seq") and KEYS[2] == bucket_key("txn:stream")
    and KEYS[3] == bucket_member_key("user", user_id)
    and KEYS[4] == bucket_member_key("req", user_id) .. ":" .. token
    and KEYS[frame.clock_index] == bucket_key("txn:clock")
    and (not frame.has_key or (valid_idempotency_key(idem_key)
                               and KEYS[frame.idem_index]
                                   == bucket_member_key("idem", user_id) .. ":" .. idem_key))
    and (not frame.has_session or valid_session_key(KEYS[frame.session_index]))
  return frame
end

-- The call's stamp (microseconds since the epoch, a decimal string; nil when refused), and
-- what refuses the call before any money is looked at (refusal_before_money: the session,
-- then the id counter), or nil. The stamp is stamp_past_clock's; the script keeps it
-- (frame_keep_stamp) once every check has passed.
local function money_frame_refusal(frame)
  local now = redis.call("TIME")
  local session_key = frame.has_session and KEYS[frame.session_index] or nil
  local refusal = refusal_before_money(session_key, frame.user_id, tonumber(frame.absolute_arg),
                                       frame.idle_arg, tonumber(now[1]), KEYS[1])
  if refusal then
    return nil, refusal
  end
  frame.stamp_us = stamp_past_clock(KEYS[frame.clock_index], now)
  return string.format("%d", frame.stamp_us), nil
end

-- Records the call's stamp as the bucket's last: called once every check has passed, before
-- the first record stamped with it is appended.
local function frame_keep_stamp(frame)
  assert(frame.stamp_us, "invariant: the stamp is kept only after money_frame_refusal")
  redis.call("SET", KEYS[frame.clock_index], string.format("%d", frame.stamp_us))
end

-- The frame's idempotency key, or nil when the call has none (idempotency_record's `key`).
local function frame_idempotency_key(frame)
  return frame.has_key and KEYS[frame.idem_index] or nil
end
