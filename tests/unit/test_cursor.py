"""Cursors: what the server gives it reads back, and nothing else."""

import base64

import pytest

from service.domain.cursor import decode_time_cursor, encode_time_cursor
from service.domain.refusals import Refused


def test_a_cursor_reads_back() -> None:
    assert decode_time_cursor(encode_time_cursor(1_764_633_600_123_456, 7)) == (
        1_764_633_600_123_456,
        7,
    )


def _spelt(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        # A list of holds' by id, from before every list paged by instant.
        _spelt("v1:12"),
        encode_time_cursor(1, 2)[:-1] + "!" + encode_time_cursor(1, 2)[-1],  # outside base64
        encode_time_cursor(1, 2)[:-1] + "R",  # another last digit's bits: unused bits set
        _spelt("v2:" + "1" * 30),  # a digit short
        "",
    ],
)
def test_a_cursor_the_server_did_not_give_is_refused(cursor: str) -> None:
    with pytest.raises(Refused):
        decode_time_cursor(cursor)
