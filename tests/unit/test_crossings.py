"""The sides of a transfer across buckets: the posting each party's reads list."""

from service.domain.crossings import CrossingRecord
from service.domain.postings import crossing_posting

AT_US = 1_764_633_600_123_456
OUT = {b"id": b"7", b"kind": b"transfer_out", b"from": b"1", b"to": b"2", b"amount": b"300",
       b"created_at_us": str(AT_US).encode(), b"from_balance": b"700",
       b"idem_key": b"k"}  # fmt: skip
IN = {b"id": b"7", b"kind": b"transfer_in", b"from": b"1", b"to": b"2", b"amount": b"300",
      b"created_at_us": str(AT_US + 5).encode(), b"to_balance": b"1300"}  # fmt: skip
VOIDED = {b"id": b"7", b"kind": b"transfer_voided", b"from": b"1", b"amount": b"300",
          b"created_at_us": str(AT_US + 9).encode(), b"from_balance": b"1000"}  # fmt: skip
SETTLED = {b"id": b"7", b"kind": b"transfer_settled", b"from": b"1", b"amount": b"300"}


def test_each_side_is_its_own_partys_posting() -> None:
    out = crossing_posting(CrossingRecord.from_stream_fields(OUT))
    credit = crossing_posting(CrossingRecord.from_stream_fields(IN))
    reversal = crossing_posting(CrossingRecord.from_stream_fields(VOIDED))
    assert crossing_posting(CrossingRecord.from_stream_fields(SETTLED)) is None
    assert out is not None
    assert credit is not None
    assert reversal is not None
    assert (out.viewer_user_id, out.signed_kopecks, out.at_us, out.balance_after_kopecks) == (
        1,
        -300,
        AT_US,
        700,
    )
    assert (credit.viewer_user_id, credit.signed_kopecks, credit.at_us) == (2, 300, AT_US + 5)
    assert (reversal.viewer_user_id, reversal.signed_kopecks, reversal.kind) == (1, 300, "reversal")
    assert reversal.time_order() > out.time_order()
    body = reversal.as_json(with_direction=True)
    assert (body["kind"], body["reversal_of"], body["from_user_id"], body["to_user_id"]) == (
        "reversal",
        7,
        None,
        1,
    )
    assert (body["direction"], body["balance_after_kopecks"], body["balance_after"]) == (
        "in",
        1000,
        "10.00",
    )
    assert "reversal_of" not in out.as_json(with_direction=True)
