"""What became of a money request, asked of Redis by its token (lua/lookup_request.lua): its
transaction, or "not applied", which the lookup makes final. The API asks it when a reply
was lost (service/redis/money.py); recovery asks it of a payer's bucket before it fences off
an expectation (service/redis/crossing.py), so that no reservation made is ever fenced off.
"""

from service.redis import keyspace
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient

# How long a lookup's "not applied" stops a copy of the request that is still on its way
# to Redis: far longer than TCP keeps retransmitting a segment of a closed connection, and
# than a request takes between its expectation and its reservation.
NOT_APPLIED_TTL_S = 24 * 3600


class RequestLookup:
    def __init__(self, redis: RedisClient) -> None:
        self._script = LuaScript(redis, "lookup_request")

    async def __call__(self, user_id: int, token: str) -> list[bytes]:
        """``{outcome, txn_id, created_at_us, "0"}``: outcome "ok" (the request's
        transaction), "not_applied" or "not_rebuilt" (Redis lost its data). Answered once
        the replicas have its writes (ReplicasNotConfirmed otherwise, with the reply)."""
        reply: list[bytes] = await self._script(
            keys=[
                keyspace.request_outcome(user_id, token),
                keyspace.txn_seq(keyspace.bucket_of(user_id)),
            ],
            args=[str(user_id), token, str(NOT_APPLIED_TTL_S)],
            wait_for_replicas=True,
        )
        return reply
