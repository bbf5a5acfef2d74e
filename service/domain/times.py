"""Instants: the scripts stamp transactions in integer microseconds since the epoch (UTC,
Redis's clock); the ledger stores timestamptz; the API shows RFC 3339 in UTC."""

import re
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
    # isoformat, not strftime: strftime's %Y does not pad a year below 1000 ("9-01-22").
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# RFC 3339's date-time: a time zone is required (Z or an offset); the fraction may have any
# number of digits, of which the first six (microseconds) are kept.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})"
)


def parse_rfc3339(raw: str) -> datetime:
    """An RFC 3339 instant; ValueError for anything else (a naive time included)."""
    match = _RFC3339.fullmatch(raw)
    if match is None:
        raise ValueError(f"not an RFC 3339 instant: {raw!r}")
    date, time, fraction, zone = match.groups()
    micros = (fraction or "").ljust(6, "0")[:6]
    offset = "+00:00" if zone in ("Z", "z") else zone
    return datetime.fromisoformat(f"{date}T{time}.{micros}{offset}")
