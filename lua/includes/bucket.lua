-- bucket (included first by every script on money keys): the bucket the call's keys are in.
-- Money keys carry the hash tag {b<bucket>} of their bucket (service/redis/keyspace.py), so
-- that the keys of one script are in one Redis Cluster slot. The call's bucket is its
-- first key's; the scripts compare every key with the names built here, so a call whose
-- keys span buckets is refused before anything is read.

local BUCKET_TAG = (type(KEYS[1]) == "string" and string.match(KEYS[1], "{b%d+}")) or "{none}"

-- A key of the bucket itself: txn:seq:{b0}.
local function bucket_key(name)
  return name .. ":" .. BUCKET_TAG
end

-- A key of one user, or one hold, in the bucket: user:{b0}:42.
local function bucket_member_key(name, id)
  return name .. ":" .. BUCKET_TAG .. ":" .. id
end

-- The key of a session from its id, <bucket>.<token> (keyspace.session), when the id is
-- well formed and of this bucket; else nil.
local function session_key_of(session_id)
  if type(session_id) ~= "string" or #session_id > 69 then
    return nil
  end
  local bucket, token = string.match(session_id, "^(%d+)%.([%w_%-]+)$")
  if not bucket or "{b" .. bucket .. "}" ~= BUCKET_TAG then
    return nil
  end
  return bucket_member_key("wallet_session", token)
end
