-- dead_letter: move a stream entry the writer cannot store to the dead-letter
-- stream and acknowledge it, atomically: a crash can never leave an entry
-- acknowledged without its dead-letter record (if XADD fails, XACK never runs).
--
-- KEYS[1]  txn:stream:{b}            the transactions stream
-- KEYS[2]  txn:dead-letter:{b}       stream: one entry per record that could not be stored
-- ARGV[1]  group                     the writer's consumer group (ledger-writer)
-- ARGV[2]  entry_id                  the stream entry being given up on
-- ARGV[3..] field, value, ...        the dead-letter record: an even number of strings
--
-- Returns  the number of entries acknowledged (0 or 1), or
--          "invalid_argument" when KEYS/ARGV fail validation (nothing written).

-- @include bucket

if #KEYS ~= 2 or KEYS[1] ~= bucket_key("txn:stream") or KEYS[2] ~= bucket_key("txn:dead-letter")
  or #ARGV < 4 or #ARGV % 2 ~= 0 or ARGV[1] == ""
  or not string.match(ARGV[2], "^%d+%-%d+$") then
  return "invalid_argument"
end

redis.call("XADD", KEYS[2], "*", unpack(ARGV, 3))
return redis.call("XACK", KEYS[1], ARGV[1], ARGV[2])
