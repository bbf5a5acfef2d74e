"""txn_id_epoch: the epochs of transaction ids handed out

Revision ID: 0002
Revises: 0001

Ids already issued are below 10^12 (epoch 0), so a ledger that holds transactions has had
epoch 0 handed out: the next one is 1. An empty ledger starts at epoch 0.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "txn_id_epoch",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("next_epoch", sa.Integer(), nullable=False),
        sa.CheckConstraint("id = 1", name="txn_id_epoch_one_row"),
        sa.CheckConstraint("next_epoch BETWEEN 0 AND 1000", name="txn_id_epoch_range"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO txn_id_epoch (id, next_epoch)"
        " SELECT 1, COALESCE(max(id) / 1000000000000 + 1, 0) FROM transactions"
    )


def downgrade() -> None:
    op.drop_table("txn_id_epoch")
