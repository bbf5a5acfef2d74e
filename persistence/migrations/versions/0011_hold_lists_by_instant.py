"""hold lists by instant

Revision ID: 0011
Revises: 0010

A list of a user's holds is newest first by instant, then id (service/ledger/hold_reads.py):
with several buckets ids do not follow time (each bucket issues its own epoch's), so the
page's index scans go by the party, the instant and the id, as the histories' do since
0007. The indexes by party and id are replaced.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_NEWEST: list[sa.ColumnElement[object]] = [
    sa.literal_column("created_at DESC"),
    sa.literal_column("id DESC"),
]


def upgrade() -> None:
    op.drop_index("holds_by_payer", table_name="holds")
    op.drop_index("holds_by_payee", table_name="holds")
    op.create_index("holds_by_payer", "holds", [sa.literal_column("from_user_id"), *_NEWEST])
    op.create_index("holds_by_payee", "holds", [sa.literal_column("to_user_id"), *_NEWEST])


def downgrade() -> None:
    op.drop_index("holds_by_payee", table_name="holds")
    op.drop_index("holds_by_payer", table_name="holds")
    op.create_index("holds_by_payer", "holds", ["from_user_id", sa.literal_column("id DESC")])
    op.create_index("holds_by_payee", "holds", ["to_user_id", sa.literal_column("id DESC")])
