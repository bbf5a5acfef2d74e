"""Opaque keyset cursors for pages of history and of holds: where the next page starts, by
instant and id (``v2:``, 16 digits of microseconds and 15 of the id, zero-padded: a fixed
width, so that the OpenAPI document can give the pattern of its base64,
service/http/docs.py). Ids do not follow time across buckets (each bucket issues its own
epoch's), so every list of this API pages by instant. ``v1:`` was a list of holds' by id
(before holds crossed buckets): refused now, as any cursor the server does not give."""

import base64
import binascii

from service.domain.refusals import VALIDATION_ERROR, Refused

_TIME_PREFIX = "v2:"
_AT_DIGITS, _ID_DIGITS = 16, 15


def _encode(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unreadable() -> Refused:
    return Refused(
        VALIDATION_ERROR, "cursor must be the next_cursor of a previous page, as given", "cursor"
    )


def _digits(cursor: str, prefix: str, lengths: range) -> str:
    """The digits after ``prefix``, as many as ``lengths`` allows; 422 for anything else."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text.removeprefix(prefix)
    # The decoder skips characters outside the alphabet and ignores a last character's
    # unused bits: only the server's own spelling is one of its cursors.
    canonical = _encode(text) == cursor
    if not canonical or not text.startswith(prefix) or not digits.isdigit():
        raise _unreadable()
    if len(digits) not in lengths:
        raise _unreadable()
    return digits


def encode_time_cursor(at_us: int, txn_id: int) -> str:
    assert 0 <= at_us < 10**_AT_DIGITS, at_us
    assert 0 <= txn_id < 10**_ID_DIGITS, txn_id
    return _encode(f"{_TIME_PREFIX}{at_us:0{_AT_DIGITS}d}{txn_id:0{_ID_DIGITS}d}")


def decode_time_cursor(cursor: str) -> tuple[int, int]:
    """``(at_us, txn_id)``: the next page holds what comes before it."""
    width = _AT_DIGITS + _ID_DIGITS
    digits = _digits(cursor, _TIME_PREFIX, range(width, width + 1))
    return int(digits[:_AT_DIGITS]), int(digits[_AT_DIGITS:])
