"""``wallet rebuild`` of transfers across buckets (docs/scaling.md, "Across buckets"): what
Redis held of the transfers in flight is forgotten, and the ledger's reservations with no
end are put back in transit, for recovery to settle (where the ledger holds the credit) or
void (where it does not: the credit was never applied, or was lost with Redis before its
writer stored it, and the payee's rebuilt balance does not have it either).

Run with the API stopped, as the rest of the rebuild.
"""

import secrets
from typing import cast

from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.times import us_from_datetime
from service.ledger.crossing_totals import in_transit, reservations_in_transit
from service.redis import keyspace
from service.redis.crossing import ENDED_RETENTION_S
from service.redis.scripts import LuaScript, ScriptArgumentRejected
from service.redis.types import RedisClient

BATCH_SIZE = 1000


async def forget_transfers_in_flight(redis: RedisClient, bucket: int) -> None:
    """Drops the bucket's expectations not applied yet (their headroom goes with the
    wallets' incoming_kopecks, rewritten from the ledger: an expectation is no ledger
    record) and its due sets, which come back from the ledger alone."""
    due = keyspace.inbound_due(bucket)
    for member in cast(list[bytes], await redis.zrange(due, 0, -1)):
        to_user_id, _, token = member.decode().partition(":")
        record = keyspace.inbound(int(to_user_id), token)
        if await redis.hget(record, "state") == b"expected":
            await redis.delete(record)
    await redis.delete(due, keyspace.outbound_due(bucket))


async def restore_transfers_in_transit(redis: RedisClient, engine: AsyncEngine) -> int:
    """Sets each bucket's transit:{b} to the ledger's reservations with no end, then puts
    each of them back (lua/restore_reservation.lua), due at once, its credit's record first
    where the ledger holds the credit (lua/restore_credit.lua), so that recovery never finds
    the reservation without it. Returns how many were written (a rebuild run again finds
    them there)."""
    async with engine.connect() as connection:
        for bucket in keyspace.all_buckets():
            kopecks, _ = await in_transit(connection, bucket)
            await redis.set(keyspace.transit(bucket), kopecks)
    restore_reservation = LuaScript(redis, "restore_reservation")
    restore_credit = LuaScript(redis, "restore_credit")
    seconds, micros = await redis.time()
    now_us = seconds * 1_000_000 + micros
    restored = 0
    after_id = 0
    while True:
        async with engine.connect() as connection:
            rows = await reservations_in_transit(connection, after_id, BATCH_SIZE)
        if not rows:
            return restored
        for reservation in rows:
            bucket = keyspace.bucket_of(reservation.from_user_id)
            outbound = keyspace.outbound(bucket, reservation.id)
            # A rebuild run again finds the reservation it put back, and its token.
            kept = cast(bytes | None, await redis.hget(outbound, "token"))
            token = kept.decode() if kept is not None else secrets.token_urlsafe(16)
            if reservation.credited_at is not None:
                reply = await restore_credit(
                    keys=[keyspace.inbound(reservation.to_user_id, token)],
                    args=[
                        str(reservation.to_user_id),
                        token,
                        str(reservation.id),
                        str(reservation.amount_kopecks),
                        str(us_from_datetime(reservation.credited_at)),
                        str(ENDED_RETENTION_S),
                    ],
                )
                if reply != [b"restored"]:
                    raise ScriptArgumentRejected(f"restore_credit of {reservation.id}: {reply!r}")
            reply = await restore_reservation(
                keys=[
                    outbound,
                    keyspace.outbound_due(bucket),
                    keyspace.user(reservation.from_user_id),
                ],
                args=[
                    str(reservation.id),
                    str(reservation.from_user_id),
                    str(reservation.to_user_id),
                    str(reservation.amount_kopecks),
                    token,
                    str(us_from_datetime(reservation.created_at)),
                    str(reservation.from_balance_after_kopecks),
                    reservation.idempotency_key or "",
                    str(now_us),
                ],
            )
            if reply not in ([b"restored", token.encode()], [b"kept", token.encode()]):
                raise ScriptArgumentRejected(f"restore_reservation of {reservation.id}: {reply!r}")
            restored += reply[0] == b"restored"
        after_id = rows[-1].id
