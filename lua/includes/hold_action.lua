-- hold_action (included by hold_capture.lua and hold_void.lua, after holds.lua): the
-- pending hold its payee acts on (docs/holds.md).

-- The hold under hold_key as its payee user_id may act on it at now_us (a number), the
-- call having named its payer payer_id ("" when the API found no hold to name it from).
-- Returns the hold {amount_arg, amount, created_at_us, expires_at_us}, or nil, the refusal
-- and whether it is recorded under the Idempotency-Key: a hold missing from Redis, or a
-- call that named no payer, is hold_not_found unrecorded (the API answers it from the
-- ledger); another user's hold, or one named with another payer, hold_not_found recorded;
-- a hold no longer pending, or at or past its expires_at, hold_not_pending recorded.
local function pending_hold_of_payee(hold_key, user_id, payer_id, now_us)
  local raw = redis.call("HMGET", hold_key, "from", "to", "amount", "status", "created_at_us",
                         "expires_at_us")
  if not raw[1] or payer_id == "" then
    return nil, "hold_not_found", false
  end
  if raw[2] ~= user_id or raw[1] ~= payer_id then
    return nil, "hold_not_found", true
  end
  if raw[4] ~= "pending" or now_us >= tonumber(raw[6]) then
    return nil, "hold_not_pending", true
  end
  return {amount_arg = raw[3], amount = tonumber(raw[3]), created_at_us = raw[5],
          expires_at_us = raw[6]}
end

-- The hold's members of holds:{b}:<payer> and holds:due:{b}, once it is checked that both
-- wallets and both sets count it, as they must while it is pending (wallet_amounts of
-- payer and payee, read by the caller).
local function counted_hold_members(hold_id, hold, payer_id, user_id, payer, payee,
                                    payer_holds_key, due_key)
  assert(payer and payer.held >= hold.amount and payee.incoming >= hold.amount,
    "invariant: a pending hold that its parties' wallets do not count: hold " .. hold_id)
  local payer_member = hold_id .. ":" .. user_id .. ":" .. hold.amount_arg
  local due_member = hold_id .. ":" .. payer_id .. ":" .. user_id .. ":" .. hold.amount_arg
  assert(redis.call("ZSCORE", payer_holds_key, payer_member)
    and redis.call("ZSCORE", due_key, due_member),
    "invariant: a pending hold missing from its sorted sets: hold " .. hold_id)
  return payer_member, due_member
end

-- The pending hold a payee of another bucket acts on (lua/hold_capture_across.lua and
-- lua/hold_void_across.lua, where the payee's key is not), or nil and the reply to give: a
-- refusal, recorded under the request's token (req_key, or false when the request has no
-- key, so no claim) so that the payee's claim can be completed with it after a crash; or
-- hold_missing, unrecorded (the API asks the ledger).
-- Needs request_outcome.lua included before it.
local function pending_hold_across(hold_key, req_key, user_id, payer_id, now_us, outcome_ttl_arg)
  local hold, refused, recorded = pending_hold_of_payee(hold_key, user_id, payer_id, now_us)
  if hold then
    return hold, nil
  end
  if not recorded then
    return nil, {"hold_missing", "", "", "", "", "0"}
  end
  if req_key then
    record_request_outcome(req_key, outcome_ttl_arg, {refused, "", "", "0"})
  end
  return nil, {refused, "", "", "", "", "0"}
end

-- The members of holds:{b}:<payer> and holds:due:{b} of a hold across buckets, once it is
-- checked that its payer's side counts it, as it must while it is pending (its payee's side
-- is an expectation in the payee's bucket).
local function payer_side_members(hold_id, hold, payer_id, user_id, payer, payer_holds_key,
                                  due_key)
  local payer_member = hold_id .. ":" .. user_id .. ":" .. hold.amount_arg
  local due_member = hold_id .. ":" .. payer_id .. ":" .. user_id .. ":" .. hold.amount_arg
  assert(payer and payer.held >= hold.amount
    and redis.call("ZSCORE", payer_holds_key, payer_member)
    and redis.call("ZSCORE", due_key, due_member),
    "invariant: a pending hold across buckets that its payer's side does not count: hold "
    .. hold_id)
  return payer_member, due_member
end
