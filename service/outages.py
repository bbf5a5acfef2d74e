"""What the world did to us, as opposed to a bug: a backend that cannot be reached.

``is_outage`` is the one classification: only these are retried (the writer) or answered
503 (the API and its start-up checks). Anything else is a programming error: the API
answers 500 and logs it, the writer crashes so that it is seen and fixed rather than
retried for ever.
"""

from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# SQLSTATE classes of a server that went away, is starting, stopping or overloaded, or
# will not take our connection: 08 connection exception, 28 invalid authorization (a
# wrong password), 3D invalid catalog name (no such database), 53 insufficient
# resources, 57 operator intervention (admin shutdown, cannot connect now), 58 system
# error. /readyz reports each of them as the database being unavailable; so does the API.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "28", "3D", "53", "57", "58"})

# Redis's ConnectionError covers BusyLoadingError (a restarted Redis reading its AOF);
# OSError covers refused connections and TimeoutError. The Redis refusals are answers of a
# server that cannot take writes now (at maxmemory, a replica, no master, a slot moving):
# the command did not run. PoolTimeoutError: no database connection came free in time.
_OUTAGE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OutOfMemoryError,
    ReadOnlyError,
    MasterDownError,
    TryAgainError,
    # A cluster that is down, a slot no node serves, redirections that did not settle
    # (ClusterError: "TTL exhausted"); service/redis/cluster.py's own are outages too.
    ClusterDownError,
    SlotNotCoveredError,
    ClusterError,
    OperationalError,
    InterfaceError,
    PoolTimeoutError,
    OSError,
)
# Redis refusals redis-py has no class for: a script running too long (BUSY), too few
# replicas for a write (NOREPLICAS).
_OUTAGE_REPLY_PREFIXES = ("BUSY ", "NOREPLICAS ")

# uvloop's transports raise RuntimeError("unable to perform operation on
# <TCPTransport closed=True ...>; the handler is closed") where asyncio's raise an
# OSError: a write to a connection the server closed (a Redis killed while a connection
# to it opens). The message is uvloop's own (uvloop/handles/handle.pyx).
_UVLOOP_CLOSED_PREFIX = "unable to perform operation on <"
_UVLOOP_CLOSED_SUFFIX = "; the handler is closed"


def is_outage(error: BaseException) -> bool:
    if isinstance(error, _OUTAGE_ERRORS):
        return True
    if isinstance(error, ResponseError):
        return str(error).startswith(_OUTAGE_REPLY_PREFIXES)
    if isinstance(error, RuntimeError):
        message = str(error)
        return message.startswith(_UVLOOP_CLOSED_PREFIX) and message.endswith(_UVLOOP_CLOSED_SUFFIX)
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    return False
