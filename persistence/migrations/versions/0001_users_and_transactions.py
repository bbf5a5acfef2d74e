"""users and transactions

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("username", sa.String(length=32), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint("length(username) BETWEEN 3 AND 32", name="users_username_length"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "users_username_lower_key", "users", [sa.literal_column("lower(username)")], unique=True
    )
    op.create_table(
        "transactions",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("from_user_id", sa.BigInteger(), nullable=True),
        sa.Column("to_user_id", sa.BigInteger(), nullable=False),
        sa.Column("amount_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_balance_after_kopecks", sa.BigInteger(), nullable=True),
        sa.Column("to_balance_after_kopecks", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=64), nullable=True),
        sa.Column("stream_entry_id", sa.String(length=48), nullable=False),
        sa.CheckConstraint(
            "(kind = 'deposit' AND from_user_id IS NULL AND from_balance_after_kopecks IS NULL) OR (kind = 'transfer' AND from_user_id IS NOT NULL AND from_balance_after_kopecks IS NOT NULL AND from_user_id <> to_user_id)",
            name="transactions_kind_shape",
        ),
        sa.CheckConstraint(
            "amount_kopecks BETWEEN 1 AND 1000000000000", name="transactions_amount_range"
        ),
        sa.CheckConstraint(
            "to_balance_after_kopecks BETWEEN 0 AND 1000000000000000 AND (from_balance_after_kopecks IS NULL OR from_balance_after_kopecks BETWEEN 0 AND 1000000000000000)",
            name="transactions_balance_range",
        ),
        sa.ForeignKeyConstraint(
            ["from_user_id"],
            ["users.id"],
        ),
        sa.ForeignKeyConstraint(
            ["to_user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "transactions_deposits_by_user",
        "transactions",
        ["to_user_id", sa.literal_column("id DESC")],
        unique=False,
        postgresql_where=sa.text("kind = 'deposit'"),
        sqlite_where=sa.text("kind = 'deposit'"),
    )
    op.create_index(
        "transactions_recent_idempotency_keys",
        "transactions",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index(
        "transactions_transfers_in_by_user",
        "transactions",
        ["to_user_id", sa.literal_column("id DESC")],
        unique=False,
        postgresql_where=sa.text("kind = 'transfer'"),
        sqlite_where=sa.text("kind = 'transfer'"),
    )
    op.create_index(
        "transactions_transfers_out_by_user",
        "transactions",
        ["from_user_id", sa.literal_column("id DESC")],
        unique=False,
        postgresql_where=sa.text("from_user_id IS NOT NULL"),
        sqlite_where=sa.text("from_user_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "transactions_transfers_out_by_user",
        table_name="transactions",
        postgresql_where=sa.text("from_user_id IS NOT NULL"),
        sqlite_where=sa.text("from_user_id IS NOT NULL"),
    )
    op.drop_index(
        "transactions_transfers_in_by_user",
        table_name="transactions",
        postgresql_where=sa.text("kind = 'transfer'"),
        sqlite_where=sa.text("kind = 'transfer'"),
    )
    op.drop_index(
        "transactions_recent_idempotency_keys",
        table_name="transactions",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "transactions_deposits_by_user",
        table_name="transactions",
        postgresql_where=sa.text("kind = 'deposit'"),
        sqlite_where=sa.text("kind = 'deposit'"),
    )
    op.drop_table("transactions")
    op.drop_index("users_username_lower_key", table_name="users")
    op.drop_table("users")
