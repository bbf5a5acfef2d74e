"""Users in PostgreSQL: the durable record, written before the Redis wallet."""

from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
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


async def password_hash_of(engine: AsyncEngine, user_id: int) -> str | None:
    async with engine.connect() as connection:
        stored: str | None = (
            await connection.execute(select(User.password_hash).where(User.id == user_id))
        ).scalar_one_or_none()
    return stored


async def replace_password_hash(
    engine: AsyncEngine, user_id: int, old_hash: str, new_hash: str
) -> bool:
    """Sets the new hash only if the stored one is still ``old_hash`` (the one the caller
    verified the current password against); False if another change came first."""
    async with engine.begin() as connection:
        result = await connection.execute(
            update(User)
            .where(User.id == user_id, User.password_hash == old_hash)
            .values(password_hash=new_hash)
            .returning(User.id)
        )
        return result.one_or_none() is not None
