"""Statements that cannot run inside a database of one's own (CREATE/DROP DATABASE)."""

import asyncpg


async def postgres_admin(dsn: str, statement: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
