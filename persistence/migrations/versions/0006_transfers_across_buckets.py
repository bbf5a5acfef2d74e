"""transfer_reservations, transfer_credits, transfer_ends: transfers across buckets

Revision ID: 0006
Revises: 0005

The sides of a transfer across buckets, each stored by the writer of the bucket whose
stream records it (service/domain/crossings.py, docs/scaling.md "Across buckets"): the
reservation and its end on the payer's bucket, the credit on the payee's. Keyed by the
transfer's id, with no foreign keys between them: the two writers store them in either
order.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_AMOUNT = "amount_kopecks BETWEEN 1 AND 1000000000000"


def upgrade() -> None:
    op.create_table(
        "transfer_reservations",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("from_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("to_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amount_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_balance_after_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(64), nullable=True),
        sa.Column("stream_entry_id", sa.String(48), nullable=False),
        sa.CheckConstraint(_AMOUNT, name="transfer_reservations_amount_range"),
        sa.CheckConstraint("from_user_id <> to_user_id", name="transfer_reservations_two_parties"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "transfer_credits",
        sa.Column("transfer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("from_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("to_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amount_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("credited_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("to_balance_after_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("stream_entry_id", sa.String(48), nullable=False),
        sa.CheckConstraint(_AMOUNT, name="transfer_credits_amount_range"),
        sa.PrimaryKeyConstraint("transfer_id"),
    )
    op.create_table(
        "transfer_ends",
        sa.Column("transfer_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("from_user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amount_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("from_balance_after_kopecks", sa.BigInteger(), nullable=True),
        sa.Column("stream_entry_id", sa.String(48), nullable=False),
        sa.CheckConstraint("outcome IN ('settled', 'voided')", name="transfer_ends_outcome"),
        sa.CheckConstraint(
            "(outcome = 'voided') = (at IS NOT NULL)"
            " AND (outcome = 'voided') = (from_balance_after_kopecks IS NOT NULL)",
            name="transfer_ends_void_shape",
        ),
        sa.PrimaryKeyConstraint("transfer_id"),
    )


def downgrade() -> None:
    op.drop_table("transfer_ends")
    op.drop_table("transfer_credits")
    op.drop_table("transfer_reservations")
