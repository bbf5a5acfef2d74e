"""An outage is retried (the writer) or answered 503 (the API); anything else is a bug."""

import pytest
from redis.exceptions import (
    BusyLoadingError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.outages import is_outage


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("reset"),
        RedisTimeoutError("timeout"),
        BusyLoadingError("LOADING"),
        OperationalError("INSERT", {}, Exception("connection reset")),
        InterfaceError("INSERT", {}, Exception("connection is closed")),
        DBAPIError("INSERT", {}, Exception("gone"), connection_invalidated=True),
        DBAPIError("INSERT", {}, _PgError("57P01")),  # admin shutdown
        DBAPIError("INSERT", {}, _PgError("57P03")),  # cannot connect now
        DBAPIError("INSERT", {}, _PgError("08006")),  # connection failure
        DBAPIError("SELECT 1", {}, _PgError("3D000")),  # no such database
        DBAPIError("SELECT 1", {}, _PgError("28P01")),  # password authentication failed
        ConnectionRefusedError(111, "refused"),
        OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("READONLY You can't write against a read only replica."),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        ResponseError("BUSY Redis is busy running a script."),
        ResponseError("NOREPLICAS Not enough good replicas to write."),
        PoolTimeoutError("QueuePool limit of size 10 overflow 0 reached"),
        TimeoutError(),
        # uvloop, writing to a connection Redis closed while it opened (Redis killed).
        RuntimeError(
            "unable to perform operation on <TCPTransport closed=True reading=False"
            " 0x7f0e2c1a3b40>; the handler is closed"
        ),
    ],
)
def test_outages(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("ERR wrong number of arguments"),
        IntegrityError("INSERT", {}, Exception("check violation")),
        DataError("INSERT", {}, Exception("value too long")),
        DBAPIError("INSERT", {}, _PgError("42P01")),  # undefined table: a bug
        DBAPIError("SELECT 1", {}, _PgError("42703")),  # undefined column: a bug
        RuntimeError("dictionary changed size during iteration"),
        RuntimeError("unable to perform operation on <TCPTransport>; something else"),
        KeyError("id"),
        ValueError("bad"),
        AssertionError("invariant"),
    ],
)
def test_bugs_and_data_errors_are_no_outage(error: BaseException) -> None:
    assert not is_outage(error)
