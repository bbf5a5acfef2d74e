"""indexes for the reads of transfers across buckets

Revision ID: 0007
Revises: 0006

A user's transfer history, statements and past balances read the user's side of each
transfer across buckets from its own table (service/ledger/crossing_reads.py): the payer's
reservations and voids, the payee's credits, by user, newest id first or in time order.
The tables are new in 0006 and empty until a deployment has more than one bucket, so the
indexes are built on nothing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "transfer_reservations_by_payer",
        "transfer_reservations",
        ["from_user_id", sa.text("id DESC")],
    )
    op.create_index(
        "transfer_reservations_by_payer_time",
        "transfer_reservations",
        ["from_user_id", "created_at", "id"],
    )
    op.create_index(
        "transfer_credits_by_payee", "transfer_credits", ["to_user_id", sa.text("transfer_id DESC")]
    )
    op.create_index(
        "transfer_credits_by_payee_time",
        "transfer_credits",
        ["to_user_id", "credited_at", "transfer_id"],
    )
    op.create_index(
        "transfer_ends_voids_by_payer_time",
        "transfer_ends",
        ["from_user_id", "at", "transfer_id"],
        postgresql_where=sa.text("outcome = 'voided'"),
    )


def downgrade() -> None:
    op.drop_index("transfer_ends_voids_by_payer_time", table_name="transfer_ends")
    op.drop_index("transfer_credits_by_payee_time", table_name="transfer_credits")
    op.drop_index("transfer_credits_by_payee", table_name="transfer_credits")
    op.drop_index("transfer_reservations_by_payer_time", table_name="transfer_reservations")
    op.drop_index("transfer_reservations_by_payer", table_name="transfer_reservations")
