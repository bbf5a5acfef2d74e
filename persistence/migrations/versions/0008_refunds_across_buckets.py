"""refunds and batches across buckets

Revision ID: 0008
Revises: 0007

A refund of a transfer across buckets crosses back (docs/scaling.md, "Across buckets"): its
reservation on the refunder's bucket and its credit on the payer's are stored as the sides
of a transfer are, naming the transfer refunded (``refund_of``); the reservation keeps the
fingerprint recorded under its Idempotency-Key, which `wallet rebuild` restores and the row
alone cannot give ("all" or an amount), and a batch's leg its index, with or without a key
(`wallet rebuild` completes a leg it finds half-way rather than void it). A batch's legs to
other buckets are stored as the sides of transfers are. The refunded totals (`wallet reconcile`, `wallet
rebuild`) read the refunds' reservations and credits by the transfer refunded. A counter
started again after a failover raises its bucket's clock past the bucket's newest credit,
read from the credits in time order (service/ledger/id_counter.py).

Nullable columns added to tables that are empty until a deployment has more than one
bucket: no rewrite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_REFUNDS = "refund_of IS NOT NULL"


def upgrade() -> None:
    op.add_column("transfer_reservations", sa.Column("refund_of", sa.BigInteger()))
    op.add_column("transfer_reservations", sa.Column("idempotency_fingerprint", sa.String(64)))
    op.add_column("transfer_reservations", sa.Column("batch_leg", sa.SmallInteger()))
    op.add_column("transfer_credits", sa.Column("refund_of", sa.BigInteger()))
    op.create_index(
        "transfer_reservations_by_refund_of",
        "transfer_reservations",
        ["refund_of"],
        postgresql_where=sa.text(_REFUNDS),
    )
    op.create_index(
        "transfer_credits_by_refund_of",
        "transfer_credits",
        ["refund_of"],
        postgresql_where=sa.text(_REFUNDS),
    )
    op.create_index("transfer_credits_by_time", "transfer_credits", ["credited_at"])


def downgrade() -> None:
    op.drop_index("transfer_credits_by_time", table_name="transfer_credits")
    op.drop_index("transfer_credits_by_refund_of", table_name="transfer_credits")
    op.drop_index("transfer_reservations_by_refund_of", table_name="transfer_reservations")
    op.drop_column("transfer_credits", "refund_of")
    op.drop_column("transfer_reservations", "batch_leg")
    op.drop_column("transfer_reservations", "idempotency_fingerprint")
    op.drop_column("transfer_reservations", "refund_of")
