"""One party's side of a transaction: what a history or a statement lists to that party.

A transaction within one bucket moves both parties' balances in one script, and its record
carries both balances after it. A transfer across buckets moves them in two scripts on two
buckets (docs/scaling.md, "Across buckets"): the payer's balance at the reservation, by
the payer's bucket's clock, the payee's at the credit, by the payee's. A posting is one
party's side: the instant that party's balance moved and that balance after it, so that a
user's postings, ordered by ``(at_us, txn_id)``, follow the user's balance step by step
(every change of a balance happens in the user's bucket, stamped past the bucket's last
stamp). A reservation that a void undid is two postings of its payer: the transfer out,
then its reversal, which gives the money back.
"""

from dataclasses import dataclass

from service.domain.amounts import format_rubles
from service.domain.crossings import CrossingRecord
from service.domain.transactions import ItemKind, Transaction, transaction_json


@dataclass(frozen=True, slots=True)
class Posting:
    txn_id: int  # a reversal's is the transfer's it undoes: a void takes no id
    kind: ItemKind
    viewer_user_id: int
    from_user_id: int | None  # None for a deposit and a reversal
    to_user_id: int  # a reversal's is the payer of the transfer undone
    amount_kopecks: int
    at_us: int  # when the viewer's balance moved
    balance_after_kopecks: int  # the viewer's
    hold_id: int | None = None
    refund_of: int | None = None

    def __post_init__(self) -> None:
        assert self.viewer_user_id in (self.from_user_id, self.to_user_id), self
        assert self.amount_kopecks >= 1, self
        assert self.balance_after_kopecks >= 0, self
        assert (self.from_user_id is None) == (self.kind in ("deposit", "reversal")), self

    @property
    def incoming(self) -> bool:
        return self.to_user_id == self.viewer_user_id

    @property
    def signed_kopecks(self) -> int:
        """What it did to the viewer's balance."""
        return self.amount_kopecks if self.incoming else -self.amount_kopecks

    def time_order(self) -> tuple[int, int, int]:
        """The order the viewer's balance moved in. A transfer and its reversal share an
        id but never an instant (two scripts); the kind only keeps the key total."""
        return self.at_us, self.txn_id, self.kind == "reversal"

    def as_json(self, with_direction: bool) -> dict[str, object]:
        """The transaction as the viewer sees it in a history or a statement: with the
        viewer's balance right after it, and (in transfer history) its direction. A
        reversal names the transfer it undoes (``reversal_of``)."""
        body = transaction_json(
            txn_id=self.txn_id,
            kind=self.kind,
            from_user_id=self.from_user_id,
            to_user_id=self.to_user_id,
            amount_kopecks=self.amount_kopecks,
            created_at_us=self.at_us,
            hold_id=self.hold_id,
            refund_of=self.refund_of,
            reversal_of=self.txn_id if self.kind == "reversal" else None,
        )
        if with_direction:
            body["direction"] = "in" if self.incoming else "out"
        body["balance_after_kopecks"] = self.balance_after_kopecks
        body["balance_after"] = format_rubles(self.balance_after_kopecks)
        return body


# A transaction as a party finds it by id (service/ledger/lookup.py): the transaction, or,
# for a transfer across buckets, which has none, that party's side of it.
FoundTransaction = Transaction | Posting


def posting_of(txn: Transaction, viewer_user_id: int) -> Posting:
    """The viewer's side of a transaction within one bucket: both sides share its instant."""
    return Posting(
        txn_id=txn.txn_id,
        kind=txn.kind,
        viewer_user_id=viewer_user_id,
        from_user_id=txn.from_user_id,
        to_user_id=txn.to_user_id,
        amount_kopecks=txn.amount_kopecks,
        at_us=txn.created_at_us,
        balance_after_kopecks=txn.balance_after_kopecks(viewer_user_id),
        hold_id=txn.hold_id,
        refund_of=txn.refund_of,
    )


def crossing_posting(record: CrossingRecord) -> Posting | None:
    """The side a record of a transfer across buckets moved: the payer's at the
    reservation (the transfer out) and at the void (its reversal), the payee's at the
    credit (the transfer in); a settle moves no balance (None). A refund across buckets is
    the same records, of kind refund."""
    if record.kind == "transfer_settled":
        return None
    assert record.at_us is not None, record
    assert record.balance_after_kopecks is not None, record
    reversal = record.kind == "transfer_voided"
    to_user_id = record.from_user_id if reversal else record.to_user_id
    assert to_user_id is not None, record
    return Posting(
        txn_id=record.txn_id,
        kind="reversal" if reversal else ("transfer" if record.refund_of is None else "refund"),
        viewer_user_id=to_user_id if record.kind == "transfer_in" else record.from_user_id,
        from_user_id=None if reversal else record.from_user_id,
        to_user_id=to_user_id,
        amount_kopecks=record.amount_kopecks,
        at_us=record.at_us,
        balance_after_kopecks=record.balance_after_kopecks,
        hold_id=None if reversal else record.hold_id,
        refund_of=record.refund_of,
    )
