"""The check every new connection to a primary makes before it carries a command, on a
deployment where the primary can change (Sentinel: service/redis/sentinel.py; Cluster: the
script calls' connections, service/redis/cluster.py): the transaction id counter of each
bucket must belong to this server's replication history (lua/follow_primary.lua).

A replica promoted by a failover may lack the old primary's last transactions, and its
``txn:seq`` may be behind ids given to them; a restarted primary starts a new history too.
The counter is then set aside, and money refused, until the writer starts it in a new
epoch of ids (service/ledger/id_counter.py). No id is ever issued twice.

On a cluster a node serves some slots only: a bucket whose slot it does not serve answers
the script with a redirection (MOVED; ASK or TRYAGAIN while the slot moves). Its counter is
not there, so there is nothing to check on this connection: the connection that carries
that bucket's calls is one to the node that serves it, which checks it as it opens.
"""

import logging
from functools import cache
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import AskError, MovedError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.redis import keyspace
from service.redis.scripts import ScriptArgumentRejected, load_script_source

log = logging.getLogger("wallet.redis")


@cache
def _follow_primary_source() -> str:
    return load_script_source("follow_primary")


async def ask_on_connect(connection: AbstractConnection, *command: str | int) -> Any:
    """One command of a connection's handshake and its reply, within the connect timeout
    (a pipeline's connection has no socket timeout of its own)."""
    await connection.send_command(*command, check_health=False)
    reply = await connection.read_response(timeout=connection.socket_connect_timeout)
    if reply is None:
        raise RedisTimeoutError(
            f"no answer to {command[0]} from {connection.host}:{connection.port}"  # type: ignore[attr-defined]
        )
    return reply


async def replication(connection: AbstractConnection) -> tuple[str, str]:
    """The server's role (``master``, ``slave``) and replication id."""
    info = await ask_on_connect(connection, "INFO", "replication")
    fields = dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)
    return fields["role"], fields["master_replid"]


async def follow_primary(connection: AbstractConnection, *, cluster: bool) -> str:
    """Runs lua/follow_primary.lua for every bucket on a new ``connection``; the server's
    replication id. A server that is not a primary is refused (an outage: nothing sent
    yet): the Sentinels, or the cluster's slot map as this process read it, are behind a
    failover. On a cluster a bucket whose slot the node does not serve is skipped (module
    docstring)."""
    where = f"{connection.host}:{connection.port}"  # type: ignore[attr-defined]
    role, replid = await replication(connection)
    if role != "master":
        named = "in the cluster's slot map" if cluster else "by a Sentinel"
        raise RedisConnectionError(
            f"{where}, named a primary {named}, is a {role}: a failover is not known here yet"
        )
    for bucket in keyspace.all_buckets():
        keys = (
            keyspace.txn_seq(bucket),
            keyspace.txn_seq_primary(bucket),
            keyspace.txn_seq_behind(bucket),
        )
        try:
            outcome = await ask_on_connect(
                connection, "EVAL", _follow_primary_source(), len(keys), *keys, replid
            )
        except (MovedError, AskError, TryAgainError):
            if not cluster:
                raise
            continue  # not this node's bucket (now)
        if outcome == b"set_aside":
            log.warning(
                "the primary %s has a new replication history (%s): the transaction id"
                " counter of bucket %d is set aside, and money refused, until the writer"
                " starts it in a new epoch",
                where,
                replid,
                bucket,
            )
        elif outcome not in (b"same", b"adopted"):
            raise ScriptArgumentRejected(f"follow_primary.lua answered {outcome!r}")
    return replid
