"""deployment: what a deployment is created with, recorded once

Revision ID: 0005
Revises: 0004

One row, ``buckets``: the number of buckets money keys are spread over
(service/redis/keyspace.py), written by the first process that starts
(persistence/deployment.py); every process refuses to start with another count. A
deployment upgraded with users in it ran with one bucket, the only count before this
revision: that is recorded now. An empty one records what it first starts with.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("buckets", sa.SmallInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="deployment_one_row"),
        sa.CheckConstraint("buckets BETWEEN 1 AND 1024", name="deployment_buckets_range"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO deployment (id, buckets) SELECT 1, 1 WHERE EXISTS (SELECT FROM users)")


def downgrade() -> None:
    op.drop_table("deployment")
