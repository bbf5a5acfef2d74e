"""What the world did to us, as opposed to a bug: a backend that cannot be reached.

Only these are retried (the writer) or answered 503 (the API). Anything else is a
programming error: the API answers 500 and logs it, the writer crashes so that it is
seen and fixed rather than retried for ever.
"""

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

# SQLSTATE classes of a server that went away or is starting, stopping or overloaded:
# 08 connection exception, 53 insufficient resources, 57 operator intervention (admin
# shutdown, cannot connect now), 58 system error.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "57", "58"})

# Redis's ConnectionError covers BusyLoadingError (a restarted Redis reading its AOF);
# OSError covers refused connections and TimeoutError.
OUTAGE_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    InterfaceError,
    OSError,
)


def is_outage(error: BaseException) -> bool:
    if isinstance(error, OUTAGE_ERRORS):
        return True
    if isinstance(error, DBAPIError):
        if error.connection_invalidated:
            return True
        sqlstate = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    return False
