"""Instants: the scripts stamp transactions in integer microseconds since the epoch (UTC,
Redis's clock); the ledger stores timestamptz; the API shows RFC 3339 in UTC."""

from datetime import UTC, datetime, timedelta

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_from_us(epoch_us: int) -> datetime:
    """Exact: no float in between."""
    return _EPOCH + timedelta(microseconds=epoch_us)


def us_from_datetime(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"a naive datetime has no instant: {moment!r}")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def rfc3339(moment: datetime) -> str:
    """``2026-11-26T17:14:11.123456Z``: always UTC, always six fractional digits."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
