"""Users in PostgreSQL: the durable record, written before the Redis wallet."""

from dataclasses import dataclass

from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from persistence.models import User


class UsernameTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class StoredUser:
    id: int
    username: str
    password_hash: str


async def create_user(engine: AsyncEngine, username: str, password_hash: str) -> int:
    """Inserts the user; the unique index on lower(username) makes names case-insensitive."""
    try:
        async with engine.begin() as connection:
            result = await connection.execute(
                insert(User)
                .values(username=username, password_hash=password_hash)
                .returning(User.id)
            )
            return result.scalar_one()
    except IntegrityError as exc:
        if "users_username_lower_key" in str(exc.orig):
            raise UsernameTaken(username) from exc
        raise


async def find_user(engine: AsyncEngine, username: str) -> StoredUser | None:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(User.id, User.username, User.password_hash).where(
                    func.lower(User.username) == username.lower()
                )
            )
        ).one_or_none()
    return None if row is None else StoredUser(row.id, row.username, row.password_hash)
