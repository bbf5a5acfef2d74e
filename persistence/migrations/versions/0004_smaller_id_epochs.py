"""txn_id_epoch: epochs of 10^9 transaction ids, not 10^12

Revision ID: 0004
Revises: 0003

Every change of primary costs an epoch for each bucket the primary serves, so many buckets
need many more, smaller epochs (service/domain/limits.py, docs/scaling.md "Id epochs"). An
old epoch e (ids e·10^12 ..) is the new epochs e·1000 .. e·1000 + 999, so ``next_epoch`` is
multiplied by 1,000: every new epoch handed out is above every id of an old one. A counter
live at the upgrade goes on with its ids and moves to a new epoch at the next multiple of
10^9, as every counter does.

Stop every API process and writer before upgrading: an older script would carry a counter
past a 10^9 boundary. Downgrading renumbers the table (rounding up) but cannot move the
Redis counters, of which several may now lie in one old epoch: set each aside
(``txn:seq:behind:{b}``) so that the older writer starts it in an epoch of its own
(CHANGELOG).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD_TO_NEW = 1000


def _renumber(next_epoch: str, last_epoch: int) -> None:
    """Sets ``next_epoch`` to the expression given, within the range of ``last_epoch``
    (the old range's check would refuse the new numbers: it goes first)."""
    op.drop_constraint("txn_id_epoch_range", "txn_id_epoch", type_="check")
    op.execute(f"UPDATE txn_id_epoch SET next_epoch = {next_epoch}")
    op.create_check_constraint(
        "txn_id_epoch_range", "txn_id_epoch", f"next_epoch BETWEEN 0 AND {last_epoch + 1}"
    )


def upgrade() -> None:
    _renumber(f"next_epoch * {_OLD_TO_NEW}", 999_999)


def downgrade() -> None:
    # Rounded up: an old epoch is handed out if any of its new ones was.
    _renumber(f"(next_epoch + {_OLD_TO_NEW - 1}) / {_OLD_TO_NEW}", 999)
