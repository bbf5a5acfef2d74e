-- follow_primary: run by every new connection to the primary of a Sentinel deployment, and
-- by every connection of the script calls to a cluster's primary, for each bucket the node
-- serves (service/redis/counter_history.py), before it carries any command. A primary with another
-- replication history than the one the id counter was last used under (a replica promoted
-- by a failover; a primary restarted, which starts a new history too) may lack the last
-- transactions of the previous history, and its txn:seq:{b} may be behind ids that were given
-- to them. The counter is then set aside: the money scripts refuse to move money while
-- txn:seq:{b} is missing (503 wallet_unavailable), until the writer starts it again at the
-- beginning of a new epoch of ids, above every id ever issued (restart_counter.lua,
-- service/ledger/id_counter.py).
--
-- KEYS[1]  txn:seq:{b}        string: last transaction id issued
-- KEYS[2]  txn:seq:primary:{b}    string: the replication id the counter was last used under
-- KEYS[3]  txn:seq:behind:{b}     string: a counter set aside (the highest, if several were)
-- ARGV[1]  replication id     the server's master_replid (INFO replication): 40 hex digits
--
-- Returns  outcome, a string:
--   "same"              the counter is this history's (nothing written)
--   "adopted"           no history was recorded (a new system, a rebuild, a standalone
--                       Redis put under Sentinel), or there is no counter to set aside:
--                       this history is recorded as the counter's
--   "set_aside"         txn:seq:{b} moved to txn:seq:behind:{b}; this history recorded
--   "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket

local replid = ARGV[1]

if #KEYS ~= 3 or #ARGV ~= 1 or KEYS[1] ~= bucket_key("txn:seq")
  or KEYS[2] ~= bucket_key("txn:seq:primary")
  or KEYS[3] ~= bucket_key("txn:seq:behind") or type(replid) ~= "string" or #replid ~= 40
  or string.match(replid, "^%x+$") == nil then
  return "invalid_argument"
end

local history = redis.call("GET", KEYS[2])
if history == replid then
  return "same"
end
redis.call("SET", KEYS[2], replid)
local seq = redis.call("GET", KEYS[1])
if not history or not seq then
  return "adopted"
end
local behind = redis.call("GET", KEYS[3])
if not behind or tonumber(seq) > tonumber(behind) then
  redis.call("SET", KEYS[3], seq)
end
redis.call("DEL", KEYS[1])
return "set_aside"
