"""A transaction's forms, side by side: stream entry, ledger row, API object."""

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from service.domain.postings import posting_of
from service.domain.times import datetime_from_us, rfc3339, us_from_datetime
from service.domain.transactions import Transaction

FIELDS = {
    b"id": b"7",
    b"kind": b"transfer",
    b"from": b"1",
    b"to": b"2",
    b"amount": b"2000",
    b"created_at_us": b"1764633600123456",
    b"from_balance": b"8100",
    b"to_balance": b"2000",
    b"idem_key": b"k-1",
}


def test_stream_entry_to_ledger_row_and_back() -> None:
    txn = Transaction.from_stream_fields(FIELDS)
    row = txn.ledger_row("1764633600123-0")
    assert row["created_at"] == datetime(2025, 12, 2, 0, 0, 0, 123456, tzinfo=UTC)
    assert row["stream_entry_id"] == "1764633600123-0"
    assert Transaction.from_ledger(SimpleNamespace(**row)) == txn


def test_api_object() -> None:
    txn = Transaction.from_stream_fields(FIELDS)
    assert posting_of(txn, 1).as_json(with_direction=True) == {
        "id": 7,
        "kind": "transfer",
        "amount": 2000,
        "amount_rub": "20.00",
        "from_user_id": 1,
        "to_user_id": 2,
        "created_at": "2025-12-02T00:00:00.123456Z",
        "direction": "out",
        "balance_after_kopecks": 8100,
        "balance_after": "81.00",
    }
    assert posting_of(txn, 2).as_json(with_direction=True)["direction"] == "in"
    assert posting_of(txn, 2).as_json(with_direction=True)["balance_after_kopecks"] == 2000
    with pytest.raises(ValueError, match="not a party"):
        posting_of(txn, 3)
    deposit = Transaction.from_stream_fields(
        FIELDS | {b"kind": b"deposit", b"from": b"", b"from_balance": b""}
    )
    assert posting_of(deposit, 2).as_json(with_direction=False)["kind"] == "deposit"
    assert "direction" not in posting_of(deposit, 2).as_json(with_direction=False)


def test_capture_and_refund_carry_their_link() -> None:
    capture = Transaction.from_stream_fields(FIELDS | {b"hold_id": b"5"})
    assert capture.hold_id == 5
    assert posting_of(capture, 1).as_json(with_direction=False)["hold_id"] == 5
    refund = Transaction.from_stream_fields(FIELDS | {b"kind": b"refund", b"refund_of": b"3"})
    assert refund.refund_of == 3
    assert posting_of(refund, 2).as_json(with_direction=True)["refund_of"] == 3


@pytest.mark.parametrize(
    "broken",
    [
        {b"kind": b"refund"},
        {b"kind": b"hold_created"},
        {b"refund_of": b"3"},
        {b"kind": b"deposit", b"from": b"", b"from_balance": b"", b"hold_id": b"5"},
        {b"from": b""},
        {b"from_balance": b""},
        {b"amount": b"0"},
        {b"id": b"x"},
    ],
)
def test_a_malformed_entry_is_refused(broken: dict[bytes, bytes]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case has its own reason
        Transaction.from_stream_fields(FIELDS | broken)


@pytest.mark.parametrize("epoch_us", [0, 1, 999_999, 1_764_633_600_123_456, 2**53 + 1])
def test_microseconds_round_trip_exactly(epoch_us: int) -> None:
    assert us_from_datetime(datetime_from_us(epoch_us)) == epoch_us


def test_rfc3339_is_utc_with_six_digits() -> None:
    assert rfc3339(datetime_from_us(1)) == "1970-01-01T00:00:00.000001Z"


def test_a_naive_datetime_is_no_instant() -> None:
    with pytest.raises(ValueError, match="naive"):
        us_from_datetime(datetime(2026, 1, 1))


def test_the_fingerprint_recorded_under_the_key_goes_to_the_ledger_and_back() -> None:
    capture = Transaction.from_stream_fields(
        FIELDS | {b"hold_id": b"5", b"idem_fp": b"capture:5:all"}
    )
    assert capture.idempotency_fingerprint == "capture:5:all"
    row = capture.ledger_row("1764633600123-0")
    assert row["idempotency_fingerprint"] == "capture:5:all"
    assert Transaction.from_ledger(SimpleNamespace(**row)) == capture
    assert Transaction.from_stream_fields(FIELDS).idempotency_fingerprint is None
    with pytest.raises(ValueError, match="idem_fp without idem_key"):
        Transaction.from_stream_fields(FIELDS | {b"idem_key": b"", b"idem_fp": b"deposit:5"})
