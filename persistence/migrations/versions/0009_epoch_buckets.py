"""txn_id_epoch_buckets: the bucket each epoch of transaction ids was handed to

Revision ID: 0009
Revises: 0008

A hold lives in its payer's bucket, and its payee, in another bucket, knows only its id
(docs/scaling.md, "Id epochs"): recording the bucket each epoch is taken for, in the same
database transaction that hands it out, lets any id name the bucket whose counter issued
it. Epochs handed out before this revision have no row: every deployment then ran with
one bucket (more are refused until holds cross buckets), whose ids need none.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# service/domain/limits.py MAX_BUCKETS, as it is at this revision.
_MAX_BUCKETS = 1024


def upgrade() -> None:
    op.create_table(
        "txn_id_epoch_buckets",
        sa.Column("epoch", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint(
            f"bucket BETWEEN 0 AND {_MAX_BUCKETS - 1}", name="txn_id_epoch_buckets_bucket_range"
        ),
        sa.PrimaryKeyConstraint("epoch"),
    )


def downgrade() -> None:
    op.drop_table("txn_id_epoch_buckets")
