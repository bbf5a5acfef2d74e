-- writer_mark: the writer's own write before it waits for the replicas
-- (WALLET_REDIS_MIN_REPLICAS; service/ledger/writer.py). It is called with
-- wait_for_replicas, so its batch ends with WAIT and WAITAOF on the connection that wrote
-- it, to the primary of the stream's bucket: once they confirm this write, they confirm
-- every stream entry the writer read before it.
--
-- KEYS[1]  txn:writer-wait:{b}       string, TTL: the consumer that waited last
-- ARGV[1]  consumer                  the writer's consumer name, 1..200 characters
-- ARGV[2]  ttl_ms                    decimal, 1 .. 10^9
--
-- Returns  "ok", or "invalid_argument" when KEYS/ARGV fail validation (nothing written).

-- @include bucket
-- @include validate

if #KEYS ~= 1 or #ARGV ~= 2 or KEYS[1] ~= bucket_key("txn:writer-wait")
  or type(ARGV[1]) ~= "string" or #ARGV[1] < 1 or #ARGV[1] > 200
  or not valid_positive(ARGV[2], 1000000000) then
  return "invalid_argument"
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
return "ok"
