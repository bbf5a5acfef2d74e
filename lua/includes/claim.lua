-- claim (included by claim_key.lua and complete_claim.lua, after validate and fingerprint):
-- the payee's Idempotency-Key of a capture or a void of a hold of another bucket
-- (docs/scaling.md, "Holds across buckets"). The payee's key lives in the payee's bucket q,
-- the hold and its money in the payer's bucket p, and no script touches both: the key is
-- claimed on q first (its record written with outcome "claimed", the fingerprint and the
-- claiming request's token), the hold acted on in p under that token, and the record
-- completed on q with the reply. While claimed, the key refuses another request's body
-- (idempotency_key_reused) as any record does; a retry of the same body finds the claim and
-- settles it by asking p what became of its token (service/redis/holds_across.py).
--
-- The record is the idempotency record of the same-bucket scripts (includes/idempotency.lua),
-- with the same fingerprint and reply fields, plus `token` and `claimed_at_us`: a replay
-- reads the same whichever bucket the hold was in.

local CLAIMED = "claimed"

-- The reply fields a completed claim records, as lua/hold_capture.lua and lua/hold_void.lua
-- record them under the key.
local CLAIM_REPLY_FIELDS = {
  capture = {"txn_id", "created_at_us", "from", "amount"},
  void = {"from", "amount", "created_at_us", "expires_at_us"},
}

-- The fingerprint of the request, as the same-bucket scripts build it; nil for a malformed
-- action or argument.
local function claim_fingerprint(action, hold_id, amount_arg)
  if not valid_id(hold_id) then
    return nil
  end
  if action == "capture" then
    if amount_arg ~= "" and not valid_positive(amount_arg, MAX_AMOUNT_KOPECKS) then
      return nil
    end
    return request_fingerprint("capture", hold_id, amount_arg ~= "" and amount_arg or "all")
  end
  if action == "void" and amount_arg == "" then
    return request_fingerprint("void", hold_id)
  end
  return nil
end
