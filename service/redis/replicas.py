"""WALLET_REDIS_MIN_REPLICAS=N: a money request is answered only once its writes are on N
replicas, so that a failover to one of them loses no acknowledged transaction.

The auto-pipeline (pipelining.py) ends every batch that holds a money call with ``WAIT N
timeout`` and ``WAITAOF 0 N timeout``: the replicas have the writes in their append-only
files, fsynced; on a server without WAITAOF, with WAIT alone (the replicas have them in
memory). Either waits for every write the connection made before it: the batch's scripts,
and whatever the connection wrote earlier.

Why WAIT first: a replica answers the primary's request for its offsets (REPLCONF GETACK)
as soon as it reads it, and fsyncs what came with it only afterwards; sent in the same
packet as the writes, as a batch sends it, WAITAOF then waits for the replica's next
report, a second later (measured: every pipelined ``INCR; WAITAOF 0 1`` took 1.0 s on
Valkey 9.1). WAIT makes the replica report once; the WAITAOF after it asks again, by
when the replica has fsynced (``INCR; WAIT 1; WAITAOF 0 1``: 2.6 ms median, 11 ms p99).

Since the wait covers the connection's own writes, a call it confirms must have written:
every money call of the API does, even a replay (the session's expiry, checked first in
every money script), and lua/lookup_request.lua rewrites the record it finds for that
reason; the writer writes a mark of its own (lua/writer_mark.lua).

A money call whose script moved money is then answered only if the replicas confirmed;
if they did not in time (or the confirmation was lost), its caller gets
``ReplicasNotConfirmed`` with the script's reply, and answers 503 outcome_unknown
(service/redis/money.py). A call answered with an error, or with a refusal, is answered
as it is: it moved no money.

The writer waits the same way after each read of the stream (service/ledger/writer.py):
it stores in the ledger only what N replicas have, so a failover never leaves the ledger
with a transaction the new primary lacks.
"""

from dataclasses import dataclass
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from service.settings import Settings

# WAITAOF with nothing to wait for: answered at once where the server has the command.
WAITAOF_PROBE = ("WAITAOF", 0, 0, 0)


@dataclass(frozen=True, slots=True)
class ReplicaWait:
    replicas: int
    timeout_ms: int

    def commands(self, has_waitaof: bool) -> list[tuple[str | int, ...]]:
        """The commands that end a batch; the last one's reply says whether the replicas
        have its writes (``confirmed``)."""
        wait: list[tuple[str | int, ...]] = [("WAIT", self.replicas, self.timeout_ms)]
        if has_waitaof:
            wait.append(("WAITAOF", 0, self.replicas, self.timeout_ms))
        return wait

    def confirmed(self, reply: object) -> bool:
        """Did the last command's reply say that the replicas have the writes? Anything
        but a count (an error, no reply at all) says no."""
        # WAITAOF answers [local fsyncs, replicas]; WAIT answers the replicas.
        count = reply[1] if isinstance(reply, list) and len(reply) == 2 else reply
        return type(count) is int and count >= self.replicas


def replica_wait(settings: Settings) -> ReplicaWait | None:
    """The wait WALLET_REDIS_MIN_REPLICAS asks for; None for none (the default)."""
    if settings.redis_min_replicas == 0:
        return None
    return ReplicaWait(settings.redis_min_replicas, settings.redis_replica_wait_ms)


def is_unknown_command(error: ResponseError) -> bool:
    """A server that has no such command (a Redis before 7.2 has no WAITAOF)."""
    return str(error).lower().startswith("unknown command")


class ReplicasNotConfirmed(RedisConnectionError):
    """A call ran, but the replicas did not confirm its writes in time: a failover may
    lose them. ``reply`` is the call's own reply. To most callers an outage like any other
    (it is a ConnectionError); a money call that moved money answers outcome_unknown."""

    def __init__(self, reply: Any, wait_reply: object) -> None:
        super().__init__(f"the replicas did not confirm the writes in time: {wait_reply!r}")
        self.reply: Any = reply
