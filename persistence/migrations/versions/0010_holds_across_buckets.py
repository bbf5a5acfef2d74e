"""holds across buckets

Revision ID: 0010
Revises: 0009

The capture of a hold whose payee is in another bucket is a transfer across buckets
(docs/scaling.md, "Holds across buckets"): its reservation on the payer's bucket and its
credit on the payee's name the hold (``hold_id``), and the hold's ``captured`` event names
the reservation's id, which has no ``transactions`` row: the event's foreign key to
``transactions`` goes (its check that a capture names a transaction stays).

Nullable columns added to tables that are empty until a deployment has more than one
bucket: no rewrite.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("transfer_reservations", sa.Column("hold_id", sa.BigInteger()))
    op.add_column("transfer_credits", sa.Column("hold_id", sa.BigInteger()))
    op.drop_constraint("hold_events_transaction_id_fkey", "hold_events", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "hold_events_transaction_id_fkey",
        "hold_events",
        "transactions",
        ["transaction_id"],
        ["id"],
    )
    op.drop_column("transfer_credits", "hold_id")
    op.drop_column("transfer_reservations", "hold_id")
