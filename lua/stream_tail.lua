-- stream_tail: the stream entries that may not be in the ledger yet, read in one
-- atomic step so that a history read can merge them (read-your-writes).
-- An entry is certainly persisted once the writer has acknowledged it and it is
-- older than every pending entry; everything from the smallest pending id on (or,
-- with nothing pending, after the group's last-delivered-id) may not be. Read
-- this BEFORE querying PostgreSQL: an entry acknowledged after this read was
-- committed before the acknowledgement, so the later query sees it.
--
-- KEYS[1]  txn:stream:{b}    the transactions stream
-- ARGV[1]  group             the writer's consumer group (ledger-writer)
-- ARGV[2]  max_entries       decimal, 1 .. 1000000: how many entries to scan at most
-- ARGV[3]  user_id           decimal, or "" for every user: keep entries whose
--                            from or to is this user
--
-- Returns  {overflow, entry_id_1, fields_1, entry_id_2, fields_2, ...}, oldest first:
--   overflow "1" when more than max_entries entries are unpersisted (the list is
--   then incomplete), else "0"; fields_i is the entry's flat field/value list.
--   {"invalid_argument"} when ARGV fails validation.

-- @include bucket

local stream, group, max_arg, user_id = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
if #KEYS ~= 1 or #ARGV ~= 3 or stream ~= bucket_key("txn:stream")
  or type(group) ~= "string" or group == ""
  or not string.match(max_arg, "^[1-9]%d*$") or #max_arg > 7
  or (user_id ~= "" and (#user_id > 15 or not string.match(user_id, "^[1-9]%d*$"))) then
  return {"invalid_argument"}
end
local max_entries = tonumber(max_arg)
if max_entries > 1000000 then
  return {"invalid_argument"}
end

if redis.call("EXISTS", stream) == 0 then
  return {"0"}
end

local start = "-"
for _, info in ipairs(redis.call("XINFO", "GROUPS", stream)) do
  local fields = {}
  for i = 1, #info, 2 do
    fields[info[i]] = info[i + 1]
  end
  if fields["name"] == group then
    local pending = redis.call("XPENDING", stream, group)
    if pending[1] > 0 then
      start = pending[2]
    else
      start = "(" .. fields["last-delivered-id"]
    end
  end
end

local entries = redis.call("XRANGE", stream, start, "+", "COUNT", max_entries + 1)
local overflow = "0"
if #entries > max_entries then
  overflow = "1"
  entries[#entries] = nil
end

local result = {overflow}
for _, entry in ipairs(entries) do
  local keep = user_id == ""
  if not keep then
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if (fields[i] == "from" or fields[i] == "to") and fields[i + 1] == user_id then
        keep = true
      end
    end
  end
  if keep then
    result[#result + 1] = entry[1]
    result[#result + 1] = entry[2]
  end
end
return result
