"""Opaque keyset cursors for history pages: the id the next page starts below."""

import base64
import binascii

from service.domain.refusals import VALIDATION_ERROR, Refused

_PREFIX = "v1:"


def encode_cursor(before_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_PREFIX}{before_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    digits = text.removeprefix(_PREFIX)
    if not text.startswith(_PREFIX) or not digits.isdigit() or not 1 <= len(digits) <= 16:
        raise Refused(
            VALIDATION_ERROR,
            "cursor must be the next_cursor of a previous page, as given",
            "cursor",
        )
    return int(digits)
