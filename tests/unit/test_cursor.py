"""Cursors: what the server gives it reads back, and nothing else."""

import pytest

from service.domain.cursor import (
    decode_cursor,
    decode_time_cursor,
    encode_cursor,
    encode_time_cursor,
)
from service.domain.refusals import Refused


def test_each_cursor_reads_back() -> None:
    assert decode_cursor(encode_cursor(42)) == 42
    assert decode_time_cursor(encode_time_cursor(1_764_633_600_123_456, 7)) == (
        1_764_633_600_123_456,
        7,
    )


@pytest.mark.parametrize(
    "cursor",
    [
        encode_time_cursor(1, 2),  # a history's, where a list of holds pages by id
        encode_cursor(12)[:-1] + "!" + encode_cursor(12)[-1],  # a character outside base64
        encode_cursor(12)[:-1] + "R",  # decodes to "v1:14" (spelt "MTQ"), unused bits set
        "",
    ],
)
def test_a_cursor_the_server_did_not_give_is_refused(cursor: str) -> None:
    with pytest.raises(Refused):
        decode_cursor(cursor)


def test_a_cursor_by_id_from_before_histories_paged_by_instant_is_refused() -> None:
    with pytest.raises(Refused):
        decode_time_cursor(encode_cursor(12))
