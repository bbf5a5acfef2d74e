-- login_attempt: may this login check its password, as far as its username's limits go?
-- If so, it is counted against them now, before the password is checked, so that attempts
-- in flight at once cannot slip past one; login_succeeded.lua or refund_login_attempt.lua
-- gives it back, and login_failed.lua records a failure (which sets the wait before the
-- next try). A refused attempt writes nothing (but the one SET that starts a lock): a
-- client that is refused cannot make Redis hold more keys, however often it tries.
--
-- The second step of a login: the client address's count, in another Redis Cluster slot,
-- was asked first (login_address_attempt.lua), and its wait is ARGV[2]. When the address
-- refused, this script counts nothing and answers the longest wait, as the single script
-- of both did; when this script refuses an attempt the address let in, the caller gives
-- the address's count back (login_address_give_back.lua). So no attempt checks its
-- password unless both counted it, and a refused one holds neither count: as safe as one
-- script (login_address_attempt.lua's header says why).
--
-- KEYS[1]  throttle:login:{<name>}:addr:<address>  hash: attempts (failures and checks in
--                                                  flight), failures, next_at_ms: one
--                                                  username from one address
-- KEYS[2]  throttle:login:{<name>}:addrs           set: the addresses failing for the
--                                                  username (at most ARGV[5] of them)
-- KEYS[3]  throttle:login:{<name>}:lock            string: when the username's lock ends
--                                                  (unix ms); the key outlives it by the
--                                                  cooldown, during which no new lock
-- ARGV[1]  address                       as in KEYS[1]
-- ARGV[2]  address_wait_ms               login_address_attempt.lua's answer: 0 (counted)
--                                        or how long the address must wait
-- ARGV[3]  window_ms                     each count lives this long from its first attempt
-- ARGV[4]  max_failures_per_username_and_address   then refused until the window ends
-- ARGV[5]  attack_addresses              this many addresses failing for one username
--                                        lock it for everyone
-- ARGV[6]  attack_lock_ms                for this long, not extended by further attempts
-- ARGV[7]  attack_cooldown_ms            after a lock ends, no new lock for this long
--
-- Returns  0: go on and check the password (counted until given back);
--          else how many ms to wait: the longest of the limits that refuse it, the
--          address's included.

-- @include login_keys

local name = login_keys_name(KEYS, ARGV[1])
if #KEYS ~= 3 or #ARGV ~= 7 or name == nil
  or KEYS[3] ~= "throttle:login:{" .. name .. "}:lock" then
  return redis.error_reply("login_attempt: the keys of one username and address expected")
end
for i = 2, 7 do
  if not string.match(ARGV[i], "^%d+$") or #ARGV[i] > 12 then
    return redis.error_reply("login_attempt: ARGV[" .. i .. "] is not a whole number")
  end
end
local address = ARGV[1]
local address_wait_ms, window_ms, max_per_pair = tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local attack_addresses, lock_ms, cooldown_ms = tonumber(ARGV[5]), tonumber(ARGV[6]),
  tonumber(ARGV[7])

local time = redis.call("TIME")
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local wait_ms = address_wait_ms
local function wait_at_least(ms)
  if ms > wait_ms then
    wait_ms = ms
  end
end

-- Many addresses failing for one username: it is under attack, and refused for everyone
-- until the lock ends. Set once, for a fixed time, and not again before the cooldown has
-- passed: an attacker cannot keep a username locked.
local lock_ends_ms = tonumber(redis.call("GET", KEYS[3]))
if lock_ends_ms ~= nil then
  wait_at_least(lock_ends_ms - now_ms)
elseif redis.call("SCARD", KEYS[2]) >= attack_addresses then
  redis.call("SET", KEYS[3], string.format("%d", now_ms + lock_ms),
    "PX", string.format("%d", lock_ms + cooldown_ms))
  redis.call("DEL", KEYS[2])
  wait_at_least(lock_ms)
end

local pair = redis.call("HMGET", KEYS[1], "attempts", "next_at_ms")
if (tonumber(pair[1]) or 0) >= max_per_pair then
  wait_at_least(redis.call("PTTL", KEYS[1]))
else
  wait_at_least((tonumber(pair[2]) or 0) - now_ms)
end

if wait_ms > 0 then
  return wait_ms
end

-- Let in: counted now. Each count's window starts at its first attempt.
if redis.call("HINCRBY", KEYS[1], "attempts", 1) == 1 then
  redis.call("PEXPIRE", KEYS[1], window_ms)
end
local failing = redis.call("SCARD", KEYS[2])
if failing < attack_addresses and redis.call("SADD", KEYS[2], address) == 1 and failing == 0 then
  redis.call("PEXPIRE", KEYS[2], window_ms)
end
return 0
