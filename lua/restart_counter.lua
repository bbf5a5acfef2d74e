-- restart_counter: start the transaction id counter again after follow_primary.lua set it
-- aside (the primary changed), at the beginning of an epoch just taken from PostgreSQL for
-- it (service/ledger/id_counter.py): above every id the counter issued before, and every
-- id any other counter issued (each runs in an epoch of its own, service/domain/limits.py).
-- The bucket's clock is raised in the same step to the last instant the ledger holds of the
-- counter's epoch: the new primary may lack transactions the writer stored from the old
-- one, and its host's clock may be behind their stamps (lua/includes/money_frame.lua).
--
-- KEYS[1]  txn:seq:{b}        string: last transaction id issued
-- KEYS[2]  txn:seq:behind:{b}     string: the counter set aside
-- KEYS[3]  txn:clock:{b}          string: the bucket's last stamp, microseconds
-- ARGV[1]  epoch_start        decimal, 1..15 digits: the new counter, the epoch's start
-- ARGV[2]  clock_floor_us     decimal, 1..16 digits: the clock is raised to it if below
--
-- Returns  outcome, a string:
--   "restarted"     txn:seq:{b} is epoch_start, txn:clock:{b} at least clock_floor_us; the
--                       set-aside counter is gone
--   "none"              nothing is set aside (nothing written)
--   "already"           a counter is back (a rebuild, or another writer, started it in an
--                       epoch of its own): the set-aside counter is dropped
--   "below"             epoch_start is not above the set-aside counter: a bug, nothing
--                       written
--   "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate

local epoch_start, clock_floor_arg = ARGV[1], ARGV[2]

if #KEYS ~= 3 or #ARGV ~= 2 or KEYS[1] ~= bucket_key("txn:seq")
  or KEYS[2] ~= bucket_key("txn:seq:behind") or KEYS[3] ~= bucket_key("txn:clock")
  or not valid_epoch_start(epoch_start)
  or type(clock_floor_arg) ~= "string" or #clock_floor_arg > 16
  or not string.match(clock_floor_arg, "^%d+$") then
  return "invalid_argument"
end

local behind = redis.call("GET", KEYS[2])
if not behind then
  return "none"
end
if redis.call("EXISTS", KEYS[1]) == 1 then
  redis.call("DEL", KEYS[2])
  return "already"
end
if tonumber(epoch_start) <= tonumber(behind) then
  return "below"
end
redis.call("SET", KEYS[1], epoch_start)
redis.call("DEL", KEYS[2])
if tonumber(redis.call("GET", KEYS[3]) or "0") < tonumber(clock_floor_arg) then
  redis.call("SET", KEYS[3], clock_floor_arg)
end
return "restarted"
