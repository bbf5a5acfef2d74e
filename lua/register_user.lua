-- register_user: give a user a wallet in Redis with a zero balance.
-- Idempotent: registering an existing user changes nothing, so it is safe to
-- repeat after a crash between the PostgreSQL insert and this call.
--
-- KEYS[1]  user:{b}:<user_id>    hash: balance_kopecks
-- ARGV[1]  user_id               decimal, 1..15 digits, no leading zero
--
-- Returns  {"created"} | {"exists"}
--          {"invalid_argument"}  when ARGV fails validation (nothing written)

-- @include bucket

local user_key = KEYS[1]
local user_id = ARGV[1]

if #KEYS ~= 1 or #ARGV ~= 1
  or type(user_id) ~= "string" or #user_id > 15 or not string.match(user_id, "^[1-9]%d*$")
  or user_key ~= bucket_member_key("user", user_id) then
  return {"invalid_argument"}
end

if redis.call("HSETNX", user_key, "balance_kopecks", "0") == 1 then
  return {"created"}
end
return {"exists"}
