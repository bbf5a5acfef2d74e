-- fingerprint (included by the money scripts and restore_idempotency.lua): what the
-- idempotency record of a request keeps to tell a retry of that request from another
-- request sent with the same key. The user is not part of it: the key is per user
-- (idem:{b}:<user_id>:<key>).
--
-- The strings must stay byte-identical to the ones already stored: a record written
-- before a change (kept for the idempotency TTL, and put back from the ledger by
-- `wallet rebuild`) would otherwise no longer match its own retry, which would then be
-- refused as idempotency_key_reused. Today they are "deposit:<amount_kopecks>" and
-- "transfer:<to_user_id>:<amount_kopecks>", as the scripts built them inline before, and
-- "transfer:@<username in lower case>:<amount_kopecks>" for a transfer to a username
-- that resolved to no one (a user id is digits only: the two never meet).

-- operation and its arguments joined by ":". Every part must be a string with no ":"
-- (the scripts pass validated decimals): a ":" inside a part would let two different
-- requests build the same fingerprint. Checked here, before any money moves.
local function request_fingerprint(operation, ...)
  local parts = {operation, ...}
  for i = 1, select("#", ...) + 1 do
    assert(type(parts[i]) == "string" and not string.find(parts[i], ":", 1, true),
      "request_fingerprint: a part is not a string without ':'")
  end
  return table.concat(parts, ":")
end
