-- advance_epoch: move the transaction id counter to a new epoch before it reaches the end of
-- its own (service/ledger/id_counter.py), while money goes on moving: the counter only
-- grows, and the new epoch was taken from PostgreSQL for it alone. Without this, money is
-- refused (epoch_exhausted) once the counter issues its epoch's last id.
--
-- KEYS[1]  txn:seq:{b}        string: last transaction id issued
-- ARGV[1]  epoch_start        decimal, 1..15 digits, a multiple of TXN_IDS_PER_EPOCH: the new
--                             counter, the start of an epoch taken for it
-- ARGV[2]  margin_ids         decimal, 1 .. TXN_IDS_PER_EPOCH - 1: how close to its epoch's
--                             last id the counter must be
--
-- Returns  outcome, a string:
--   "advanced"          txn:seq:{b} is epoch_start
--   "not_near"          the counter is further than margin_ids from its epoch's last id
--                       (another writer advanced it first): nothing written
--   "missing"           no counter (Redis lost its data, or the counter is set aside):
--                       nothing written
--   "below"             epoch_start is not above the counter: a bug, nothing written
--   "invalid_argument"  KEYS/ARGV fail validation (nothing written)

-- @include bucket
-- @include validate

local epoch_start, margin_arg = ARGV[1], ARGV[2]

if #KEYS ~= 1 or #ARGV ~= 2 or KEYS[1] ~= bucket_key("txn:seq")
  or not valid_epoch_start(epoch_start)
  or not valid_positive(margin_arg, TXN_IDS_PER_EPOCH - 1) then
  return "invalid_argument"
end

local seq = redis.call("GET", KEYS[1])
if not seq then
  return "missing"
end
seq = tonumber(seq)
-- Near first: two writers may both take an epoch, and the second to arrive finds the counter
-- at the start of the first's (which may be above its own).
if TXN_IDS_PER_EPOCH - 1 - seq % TXN_IDS_PER_EPOCH > tonumber(margin_arg) then
  return "not_near"
end
if tonumber(epoch_start) <= seq then
  return "below"
end
redis.call("SET", KEYS[1], epoch_start)
return "advanced"
