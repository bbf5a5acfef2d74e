"""The ledger's tables. The transaction id is the one the Lua script assigned."""

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    SmallInteger,
    String,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import MAX_BUCKETS, MAX_TXN_ID_EPOCH


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    username: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.current_timestamp()
    )

    __table_args__ = (
        Index("users_username_lower_key", func.lower(username), unique=True),
        CheckConstraint("length(username) BETWEEN 3 AND 32", name="users_username_length"),
    )


# What each kind of transaction carries: a deposit has no sender; a transfer and a refund
# have one, other than the recipient; only a transfer may be a hold's capture (hold_id), and
# a refund always names the transfer it refunds (refund_of).
TRANSACTIONS_KIND_SHAPE = (
    "(kind = 'deposit' AND from_user_id IS NULL AND from_balance_after_kopecks IS NULL"
    " AND hold_id IS NULL AND refund_of IS NULL)"
    " OR (kind = 'transfer' AND from_user_id IS NOT NULL"
    " AND from_balance_after_kopecks IS NOT NULL AND from_user_id <> to_user_id"
    " AND refund_of IS NULL)"
    " OR (kind = 'refund' AND from_user_id IS NOT NULL"
    " AND from_balance_after_kopecks IS NOT NULL AND from_user_id <> to_user_id"
    " AND hold_id IS NULL AND refund_of IS NOT NULL)"
)
# The kinds in transfer history (both directions), as SQL: a literal, so that the planner
# matches the partial index whatever plan a prepared statement gets.
TRANSFER_KINDS_SQL = "kind IN ('transfer', 'refund')"
# The voided ends of reservations (transfer_ends), as SQL: a literal, for its partial index.
VOIDED_SQL = "outcome = 'voided'"


class LedgerTransaction(Base):
    __tablename__ = "transactions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(8))
    from_user_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id"))
    to_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    from_balance_after_kopecks: Mapped[int | None] = mapped_column(BigInteger)
    to_balance_after_kopecks: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    stream_entry_id: Mapped[str] = mapped_column(String(48))
    # A capture of a hold: the hold. A refund: the transfer it refunds.
    hold_id: Mapped[int | None] = mapped_column(BigInteger)
    refund_of: Mapped[int | None] = mapped_column(BigInteger)
    # The fingerprint the script recorded under idempotency_key (stream field idem_fp), for
    # the operations whose fingerprint the row alone does not give: a capture or a refund
    # ("all" or an amount), a batch leg (a one-leg batch is a transfer's row). NULL for
    # deposits and transfers (derived from the row) and without a key. `wallet rebuild`.
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(
            f"amount_kopecks BETWEEN 1 AND {MAX_AMOUNT_KOPECKS}", name="transactions_amount_range"
        ),
        CheckConstraint(
            f"to_balance_after_kopecks BETWEEN 0 AND {MAX_BALANCE_KOPECKS}"
            f" AND (from_balance_after_kopecks IS NULL"
            f" OR from_balance_after_kopecks BETWEEN 0 AND {MAX_BALANCE_KOPECKS})",
            name="transactions_balance_range",
        ),
        CheckConstraint(TRANSACTIONS_KIND_SHAPE, name="transactions_kind_shape"),
        # A user's transactions in time order, each side (histories, newest first, keyset on
        # (created_at, id); statements; past balances): deposits in, transfers and refunds in,
        # transfers and refunds out. The kinds as literals, so that a query's literal
        # predicate matches.
        Index(
            "transactions_deposits_by_payee_time",
            "to_user_id",
            "created_at",
            "id",
            postgresql_where=text("kind = 'deposit'"),
            sqlite_where=text("kind = 'deposit'"),
        ),
        Index(
            "transactions_transfers_by_payee_time",
            "to_user_id",
            "created_at",
            "id",
            postgresql_where=text(TRANSFER_KINDS_SQL),
            sqlite_where=text(TRANSFER_KINDS_SQL),
        ),
        Index(
            "transactions_by_payer_time",
            "from_user_id",
            "created_at",
            "id",
            postgresql_where=text("from_user_id IS NOT NULL"),
            sqlite_where=text("from_user_id IS NOT NULL"),
        ),
        # The refunds of a transfer (refunded totals).
        Index(
            "transactions_refunds_by_original",
            "refund_of",
            postgresql_where=text("refund_of IS NOT NULL"),
            sqlite_where=text("refund_of IS NOT NULL"),
        ),
        # rebuild reloads the idempotency keys of the last 24 hours.
        Index(
            "transactions_recent_idempotency_keys",
            "created_at",
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class LedgerHold(Base):
    """One row per hold, from its ``hold_created`` stream record (docs/holds.md). The id is
    the one the Lua script assigned, from the same counter as transaction ids."""

    __tablename__ = "holds"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    from_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    to_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    stream_entry_id: Mapped[str] = mapped_column(String(48))
    # The fingerprint hold_create.lua recorded under the payer's key (stream field idem_fp).
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(
            f"amount_kopecks BETWEEN 1 AND {MAX_AMOUNT_KOPECKS}", name="holds_amount_range"
        ),
        CheckConstraint("from_user_id <> to_user_id", name="holds_two_parties"),
        CheckConstraint("expires_at > created_at", name="holds_expire_after_creation"),
        # A user's list of holds, newest first by instant then id (migration 0011): as payer
        # and as payee.
        Index("holds_by_payer", "from_user_id", text("created_at DESC"), text("id DESC")),
        Index("holds_by_payee", "to_user_id", text("created_at DESC"), text("id DESC")),
        # rebuild reloads the idempotency keys of the last 24 hours.
        Index(
            "holds_recent_idempotency_keys",
            "created_at",
            postgresql_where=text("idempotency_key IS NOT NULL"),
            sqlite_where=text("idempotency_key IS NOT NULL"),
        ),
    )


class LedgerHoldEvent(Base):
    """The end of a hold: at most one row per hold (the primary key). ``captured`` is
    stored from the capture's transaction (a transfer with hold_id), ``voided`` and
    ``expired`` from their stream records. No foreign key to ``holds``: writers may store
    a hold's end before its creation."""

    __tablename__ = "hold_events"

    hold_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Captured: the amount captured. Voided or expired: the amount released to the payer.
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    # Captured only: the capture's transaction (stored in the same database transaction),
    # or, for a hold across buckets, its reservation (``transfer_reservations``, stored with
    # it): no foreign key (migration 0010).
    transaction_id: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    stream_entry_id: Mapped[str] = mapped_column(String(48))
    # The fingerprint recorded under the payee's key: void.lua's, or a capture's (as on
    # its transaction).
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(
            "event IN ('captured', 'voided', 'expired')", name="hold_events_event_kind"
        ),
        CheckConstraint(
            f"amount_kopecks BETWEEN 1 AND {MAX_AMOUNT_KOPECKS}",
            name="hold_events_amount_range",
        ),
        CheckConstraint(
            "(event = 'captured') = (transaction_id IS NOT NULL)",
            name="hold_events_capture_transaction",
        ),
        # rebuild reloads the idempotency keys of the voids of the last 24 hours (a
        # capture's key is its transaction's).
        Index(
            "hold_events_recent_void_keys",
            "at",
            postgresql_where=text("event = 'voided' AND idempotency_key IS NOT NULL"),
            sqlite_where=text("event = 'voided' AND idempotency_key IS NOT NULL"),
        ),
    )


class LedgerTransferReservation(Base):
    """A transfer across buckets as its payer's bucket reserved it (stream record
    ``transfer_out``, service/domain/crossings.py): the money left the payer then. The id is
    the transfer's, from the payer's bucket's counter. No foreign keys between the tables of
    a transfer across buckets: two writers store its sides in either order."""

    __tablename__ = "transfer_reservations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    from_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    to_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    from_balance_after_kopecks: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    stream_entry_id: Mapped[str] = mapped_column(String(48))
    # A refund across buckets (lua/refund.lua): the transfer it refunds, and the fingerprint
    # recorded under its key ("all" or an amount: `wallet rebuild`). NULL for a transfer.
    refund_of: Mapped[int | None] = mapped_column(BigInteger)
    idempotency_fingerprint: Mapped[str | None] = mapped_column(String(64))
    # A batch's leg (lua/transfer_batch.lua): its index in the batch, with or without a key;
    # `wallet rebuild` completes such a leg rather than void it. NULL otherwise.
    batch_leg: Mapped[int | None] = mapped_column(SmallInteger)
    # The capture of a hold across buckets (lua/hold_capture_across.lua): the hold.
    hold_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            f"amount_kopecks BETWEEN 1 AND {MAX_AMOUNT_KOPECKS}",
            name="transfer_reservations_amount_range",
        ),
        CheckConstraint("from_user_id <> to_user_id", name="transfer_reservations_two_parties"),
        # The payer's reads in time order (service/ledger/posting_reads.py): transfer
        # history, statements, past balances.
        Index("transfer_reservations_by_payer_time", "from_user_id", "created_at", "id"),
        # The refunded totals (`wallet reconcile`, `wallet rebuild`).
        Index(
            "transfer_reservations_by_refund_of",
            "refund_of",
            postgresql_where=text("refund_of IS NOT NULL"),
            sqlite_where=text("refund_of IS NOT NULL"),
        ),
    )


class LedgerTransferCredit(Base):
    """The credit of a transfer across buckets on its payee's bucket (stream record
    ``transfer_in``): the money reached the payee then, by that bucket's clock."""

    __tablename__ = "transfer_credits"

    transfer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    from_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    to_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    credited_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    to_balance_after_kopecks: Mapped[int] = mapped_column(BigInteger)
    stream_entry_id: Mapped[str] = mapped_column(String(48))
    # A refund's credit: the transfer it refunds (as on its reservation); a capture's: the
    # hold.
    refund_of: Mapped[int | None] = mapped_column(BigInteger)
    hold_id: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            f"amount_kopecks BETWEEN 1 AND {MAX_AMOUNT_KOPECKS}",
            name="transfer_credits_amount_range",
        ),
        # The payee's reads, as for reservations.
        Index("transfer_credits_by_payee_time", "to_user_id", "credited_at", "transfer_id"),
        # A counter started again raises its bucket's clock past the bucket's newest credit
        # (service/ledger/id_counter.py): the newest credits first, until one of the bucket's.
        Index("transfer_credits_by_time", "credited_at"),
        # The refunded totals of `wallet rebuild` (a refund's credit without its reservation).
        Index(
            "transfer_credits_by_refund_of",
            "refund_of",
            postgresql_where=text("refund_of IS NOT NULL"),
            sqlite_where=text("refund_of IS NOT NULL"),
        ),
    )


class LedgerTransferEnd(Base):
    """The end of a reservation on its payer's bucket (stream records ``transfer_settled``
    and ``transfer_voided``): settled once its credit was applied, or voided, the money
    back to the payer (``at`` and the payer's balance after; a settle moves no balance)."""

    __tablename__ = "transfer_ends"

    transfer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    outcome: Mapped[str] = mapped_column(String(8))
    from_user_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    amount_kopecks: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    from_balance_after_kopecks: Mapped[int | None] = mapped_column(BigInteger)
    stream_entry_id: Mapped[str] = mapped_column(String(48))

    __table_args__ = (
        CheckConstraint("outcome IN ('settled', 'voided')", name="transfer_ends_outcome"),
        CheckConstraint(
            "(outcome = 'voided') = (at IS NOT NULL)"
            " AND (outcome = 'voided') = (from_balance_after_kopecks IS NOT NULL)",
            name="transfer_ends_void_shape",
        ),
        # The payer's statements and past balances: the reversals, in time order.
        Index(
            "transfer_ends_voids_by_payer_time",
            "from_user_id",
            "at",
            "transfer_id",
            postgresql_where=text(VOIDED_SQL),
            sqlite_where=text(VOIDED_SQL),
        ),
    )


class Deployment(Base):
    """One row, written by the first process to start (persistence/deployment.py): what a
    deployment is created with and may never change."""

    __tablename__ = "deployment"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    # The buckets money keys are spread over (service/redis/keyspace.py): a user's bucket
    # follows from it, so another count would look for every wallet in the wrong place.
    buckets: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (
        CheckConstraint("id = 1", name="deployment_one_row"),
        CheckConstraint(f"buckets BETWEEN 1 AND {MAX_BUCKETS}", name="deployment_buckets_range"),
    )


class TxnIdEpoch(Base):
    """One row: the next epoch of transaction ids to hand out (service/domain/limits.py).
    Taking one commits before its ids are used, so an epoch is never handed out twice."""

    __tablename__ = "txn_id_epoch"

    id: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    next_epoch: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("id = 1", name="txn_id_epoch_one_row"),
        CheckConstraint(
            f"next_epoch BETWEEN 0 AND {MAX_TXN_ID_EPOCH + 1}", name="txn_id_epoch_range"
        ),
    )


class TxnIdEpochBucket(Base):
    """The bucket each epoch of transaction ids was handed to, written with the epoch
    (persistence/txn_id_epochs.py): a bucket's counter issues ids only within its epochs, so
    any id names the bucket that issued it (service/ledger/id_buckets.py). Never changes
    once written. Epochs handed out before migration 0009 have no row."""

    __tablename__ = "txn_id_epoch_buckets"

    epoch: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    bucket: Mapped[int] = mapped_column(SmallInteger)

    __table_args__ = (
        CheckConstraint(
            f"bucket BETWEEN 0 AND {MAX_BUCKETS - 1}", name="txn_id_epoch_buckets_bucket_range"
        ),
    )
