"""The operations of the mix beyond deposits and transfers: hold, capture, void, batch,
refund. Each checks its answer against what was sent and what the tool knows:

- hold: by a random user for another, of 1..(1.1 x available); 201 is a pending hold as
  asked, with ``expires_at - created_at = expires_in_s``.
- capture, void: by the payee of a pending hold the tool made, the hold taken out of the
  pool while the request runs. A 201 capture is a transfer payer -> payee of the amount
  asked (all of the hold without one) with ``hold_id``; a void's 200 is the hold, voided.
  409 ``hold_not_pending`` is right only for a hold that may have expired, a capture or
  void after the hold surely expired is wrong.
- batch: 1..10 legs to random other users, of 1..(1.1 x available) in all; a 201 has one
  transfer per leg, in order, with consecutive ids.
- refund: by the recipient of a transfer (a capture or a batch leg included) the tool saw
  acknowledged, all that is left or an amount, sometimes more than is left; a 201 is a
  refund recipient -> sender with ``refund_of`` and never takes more than is left, 422
  ``refund_exceeds_transfer`` is right exactly when more than is left was asked.

With no hold or transfer to work on yet, a capture or void is a hold and a refund a
transfer.
"""

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from service.domain.times import parse_rfc3339
from service.loadtest.known import KnownHold, Reply, Txn, User

if TYPE_CHECKING:
    from service.loadtest.driver import Driver

# expires_in_s of the holds (the API takes 60..604800): a run longer than a minute sees
# some expire.
MIN_EXPIRES_IN_S = 60
MAX_EXPIRES_IN_S = 600
MAX_BATCH_LEGS = 10
# A capture or a refund without an amount (all of the hold, all that is left).
WHOLE_FRACTION = 0.4
# A hold the tool knows has expired is still sent a capture or void this often (409).
EXPIRED_ATTEMPT_FRACTION = 0.3


def _dict(body: Any) -> dict[str, Any]:
    return body if isinstance(body, dict) else {}


def _instant(value: Any) -> datetime | None:
    try:
        return parse_rfc3339(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _differs(got: dict[str, Any], expected: dict[str, Any]) -> bool:
    return type(got.get("id")) is not int or any(
        got.get(name) != value or type(got.get(name)) is not type(value)
        for name, value in expected.items()
    )


def _transaction(txn: Txn, **extra: Any) -> dict[str, Any]:
    fields = ("kind", "from_user_id", "to_user_id", "amount")
    return dict(zip(fields, txn, strict=True)) | extra


async def hold(d: "Driver", user: User) -> None:
    rec, rng = d.rec, d.rng
    to = d.other_user(user)
    amount = rng.randint(1, d.ceiling(user))
    expires_in_s = rng.randint(MIN_EXPIRES_IN_S, MAX_EXPIRES_IN_S)
    body = {"to_user_id": to.id, "amount": amount, "expires_in_s": expires_in_s}
    expected = {
        "status": "pending",
        "amount": amount,
        "captured_amount": 0,
        "from_user_id": user.id,
        "to_user_id": to.id,
        "capture_transaction_id": None,
    }

    def settle(reply: Reply, sent: float, answered: float) -> None:
        if reply.status != 201:
            return
        got = _dict(reply.body)
        created, expires = _instant(got.get("created_at")), _instant(got.get("expires_at"))
        lifetime = None if created is None or expires is None else expires - created
        if _differs(got, expected) or lifetime is None or lifetime.total_seconds() != expires_in_s:
            rec.violations.append(f"hold by user {user.id}: sent {body}, got {reply.raw!r}")
            return
        known = KnownHold(
            got["id"], user.id, to.id, amount, sent + expires_in_s, answered + expires_in_s
        )
        rec.acknowledge_hold(known, rng)

    if await d.post_money("hold", user, "/api/holds/", body, settle) is None:
        rec.doubtful_held[user.id] += amount


def _pending_hold(d: "Driver") -> KnownHold | None:
    """A hold the tool knows pending, taken out of the pool. Those it knows have expired
    are mostly put aside as expired; some are returned, to be refused."""
    rec, rng = d.rec, d.rng
    while (known := rec.pending.take(rng)) is not None:
        if not known.expired_from(time.time()) or rng.random() < EXPIRED_ATTEMPT_FRACTION:
            return known
        if rec.close_hold(known):
            rec.expired.add(known.id)
    return None


async def capture_or_void(d: "Driver", op: str) -> None:
    rec, rng = d.rec, d.rng
    known = _pending_hold(d)
    if known is None:
        await hold(d, rng.choice(d.users))
        return
    payee = d.user_by_id[known.to_user_id]
    body: dict[str, int] | None
    if op == "void":
        amount, body, path = 0, None, f"/api/holds/{known.id}/void/"
    else:
        whole = rng.random() < WHOLE_FRACTION
        amount = known.amount if whole else rng.randint(1, known.amount)
        body = {} if whole else {"amount": amount}
        path = f"/api/holds/{known.id}/capture/"
    what = f"{op} of hold {known.id} by user {payee.id}"

    def settle(reply: Reply, sent: float, answered: float) -> None:
        if reply.status in (200, 201) and known.expired_from(sent):
            rec.violations.append(f"{what} after it expired: {reply.status} {reply.raw!r}")
        if reply.code == "hold_not_pending":
            if known.pending_throughout(answered):
                rec.violations.append(f"{what} refused before its expiry: {reply.raw!r}")
            elif rec.close_hold(known):
                rec.expired.add(known.id)
        elif op == "void" and reply.status == 200:
            _settle_void(d, known, what, reply)
        elif op == "capture" and reply.status == 201:
            _settle_capture(d, known, amount, what, reply)
        elif known.open:
            rec.pending.add(known, rng)  # refused otherwise: it is still pending

    if await d.post_money(op, payee, path, body, settle) is None:
        rec.doubtful.append(known)  # captured, voided or still pending: unknown


def _settle_void(d: "Driver", known: KnownHold, what: str, reply: Reply) -> None:
    expected = {
        "id": known.id,
        "status": "voided",
        "amount": known.amount,
        "captured_amount": 0,
        "from_user_id": known.from_user_id,
        "to_user_id": known.to_user_id,
        "capture_transaction_id": None,
    }
    if _differs(_dict(reply.body), expected):
        d.rec.violations.append(f"{what}: got {reply.raw!r}")
    if d.rec.close_hold(known):
        d.rec.voided.add(known.id)
    else:
        d.rec.violations.append(f"{what}: voided, but it had ended already")


def _settle_capture(d: "Driver", known: KnownHold, amount: int, what: str, reply: Reply) -> None:
    rec = d.rec
    txn = Txn("transfer", known.from_user_id, known.to_user_id, amount)
    got = _dict(reply.body)
    if _differs(got, _transaction(txn, hold_id=known.id)):
        rec.violations.append(f"{what}: sent {txn}, got {reply.raw!r}")
        return
    if not rec.close_hold(known):
        rec.violations.append(f"{what}: captured, but it had ended already")
    if rec.acknowledge(got["id"], txn):
        rec.captures[got["id"]] = known.id
        d.received(got["id"], txn)


async def batch(d: "Driver", user: User) -> None:
    rec, rng = d.rec, d.rng
    legs = rng.randint(1, MAX_BATCH_LEGS)
    total = rng.randint(legs, max(legs, d.ceiling(user)))
    cuts = sorted(rng.sample(range(1, total), legs - 1))
    amounts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    txns = [Txn("transfer", user.id, d.other_user(user).id, amount) for amount in amounts]
    body = {"transfers": [{"to_user_id": t.to_user_id, "amount": t.amount} for t in txns]}

    def settle(reply: Reply, sent: float, answered: float) -> None:
        if reply.status != 201:
            return
        items = _dict(reply.body).get("items")
        first = _dict(items[0]).get("id") if isinstance(items, list) and items else None
        if (
            not isinstance(items, list)
            or len(items) != len(txns)
            or type(first) is not int
            or any(
                _differs(_dict(item), _transaction(txn, id=first + i))
                for i, (item, txn) in enumerate(zip(items, txns, strict=True))
            )
        ):
            rec.violations.append(f"batch by user {user.id}: sent {body}, got {reply.raw!r}")
            return
        rec.batches += 1
        rec.batch_legs += len(txns)
        for i, txn in enumerate(txns):
            if rec.acknowledge(first + i, txn):
                d.received(first + i, txn)

    await d.post_money("batch", user, "/api/balance/transfer/batch/", body, settle)


async def refund(d: "Driver") -> None:
    rec, rng = d.rec, d.rng
    transfer = rec.refundable.take(rng)
    if transfer is None:
        await d.transfer(rng.choice(d.users))
        return
    refunder = d.user_by_id[transfer.to_user_id]
    left = transfer.left
    if rng.random() < WHOLE_FRACTION:
        amount, body = left, {}
    else:
        amount = rng.randint(1, left + max(1, left // 5)) if left else transfer.amount
        body = {"amount": amount}
    exceeds = not 0 < amount <= left
    what = f"refund of transfer {transfer.txn_id} by user {refunder.id}"

    def settle(reply: Reply, sent: float, answered: float) -> None:
        if reply.code == "refund_exceeds_transfer" and not exceeds:
            rec.violations.append(f"{what}: {amount} of {left} left refused: {reply.raw!r}")
        if reply.status != 201:
            return
        txn = Txn("refund", refunder.id, transfer.from_user_id, amount)
        got = _dict(reply.body)
        if _differs(got, _transaction(txn, refund_of=transfer.txn_id)):
            rec.violations.append(f"{what}: sent {body}, expected {txn}, got {reply.raw!r}")
            return
        if exceeds:
            rec.violations.append(f"{what}: {amount} with {left} left was accepted")
        if rec.acknowledge(got["id"], txn):
            rec.refunds[got["id"]] = transfer.txn_id
            rec.refunded_kopecks += amount
            transfer.refunded += amount

    path = f"/api/balance/transfer/{transfer.txn_id}/refund/"
    if await d.post_money("refund", refunder, path, body, settle) is not None and transfer.left:
        rec.refundable.add(transfer, rng)  # unanswered: what is left is unknown
