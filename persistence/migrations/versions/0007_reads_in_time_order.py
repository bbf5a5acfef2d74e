"""a user's reads in time order, transfers across buckets included

Revision ID: 0007
Revises: 0006

Histories page by the viewer's instant and id, not by id alone: with several buckets a
user's transactions carry ids of several epochs (one per bucket), so id order is not time
order (docs/scaling.md). The transactions' indexes by user become time-ordered, one per
side and kind: deposits in, transfers and refunds in (replacing the id-ordered ones and the
index of every kind by payee), transfers and refunds out (the existing
transactions_by_payer_time; its id-ordered twin goes). The sides of transfers across
buckets get theirs (service/ledger/posting_reads.py): the payer's reservations and voids,
the payee's credits.

Building the two indexes locks out inserts into transactions while it runs (the writer
waits; the API goes on, the streams grow in Redis meanwhile). The tables of 0006 are empty
until a deployment has more than one bucket.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_DEPOSITS = "kind = 'deposit'"
_TRANSFERS = "kind IN ('transfer', 'refund')"
_PAYERS = "from_user_id IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "transactions_deposits_by_payee_time",
        "transactions",
        ["to_user_id", "created_at", "id"],
        postgresql_where=sa.text(_DEPOSITS),
    )
    op.create_index(
        "transactions_transfers_by_payee_time",
        "transactions",
        ["to_user_id", "created_at", "id"],
        postgresql_where=sa.text(_TRANSFERS),
    )
    op.drop_index("transactions_by_payee_time", table_name="transactions")
    op.drop_index("transactions_deposits_by_user", table_name="transactions")
    op.drop_index("transactions_transfers_in_by_user", table_name="transactions")
    op.drop_index("transactions_transfers_out_by_user", table_name="transactions")
    op.create_index(
        "transfer_reservations_by_payer_time",
        "transfer_reservations",
        ["from_user_id", "created_at", "id"],
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
    op.drop_index("transfer_reservations_by_payer_time", table_name="transfer_reservations")
    op.create_index(
        "transactions_transfers_out_by_user",
        "transactions",
        ["from_user_id", sa.text("id DESC")],
        postgresql_where=sa.text(_PAYERS),
    )
    op.create_index(
        "transactions_transfers_in_by_user",
        "transactions",
        ["to_user_id", sa.text("id DESC")],
        postgresql_where=sa.text(_TRANSFERS),
    )
    op.create_index(
        "transactions_deposits_by_user",
        "transactions",
        ["to_user_id", sa.text("id DESC")],
        postgresql_where=sa.text(_DEPOSITS),
    )
    op.create_index(
        "transactions_by_payee_time", "transactions", ["to_user_id", "created_at", "id"]
    )
    op.drop_index("transactions_transfers_by_payee_time", table_name="transactions")
    op.drop_index("transactions_deposits_by_payee_time", table_name="transactions")
