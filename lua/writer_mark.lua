-- writer_mark: the writer's own write before it waits for the replicas
-- (WALLET_REDIS_MIN_REPLICAS; service/ledger/writer.py). It is called with
-- wait_for_replicas, so its batch ends with WAIT and WAITAOF on the connection that wrote
-- it, to the primary of the stream's bucket: once they confirm this write, they confirm
-- every stream entry the writer read before it, if the read was served by this server.
-- So it first checks that every entry read is pending for the consumer here: a read that
-- another primary served (one since replaced, on a connection that had not followed the
-- failover yet) is answered "elsewhere", and nothing is written.
--
-- KEYS[1]  txn:writer-wait:{b}       string, TTL: the consumer that waited last
-- KEYS[2]  txn:stream:{b}            the stream read
-- ARGV[1]  consumer                  the writer's consumer name, 1..200 characters
-- ARGV[2]  ttl_ms                    decimal, 1 .. 10^9
-- ARGV[3]  group                     the writers' consumer group (ledger-writer)
-- ARGV[4..] entry ids                the entries just read (at least one): <ms>-<seq>
--
-- Returns  "ok"; "elsewhere" when an entry read is not pending for the consumer here;
--          "invalid_argument" when KEYS/ARGV fail validation (nothing written).

-- @include bucket
-- @include validate

if #KEYS ~= 2 or #ARGV < 4 or KEYS[1] ~= bucket_key("txn:writer-wait")
  or KEYS[2] ~= bucket_key("txn:stream")
  or type(ARGV[1]) ~= "string" or #ARGV[1] < 1 or #ARGV[1] > 200
  or not valid_positive(ARGV[2], 1000000000) or type(ARGV[3]) ~= "string" or ARGV[3] == "" then
  return "invalid_argument"
end
for i = 4, #ARGV do
  if not string.match(ARGV[i], "^%d+%-%d+$") then
    return "invalid_argument"
  end
  local pending = redis.call("XPENDING", KEYS[2], ARGV[3], ARGV[i], ARGV[i], 1, ARGV[1])
  if #pending == 0 then
    return "elsewhere"
  end
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return "ok"
