"""The ``wallet`` command line."""

import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click
from aiohttp import web
from pydantic import ValidationError

from persistence.db import connect_database
from persistence.migrate import migrate as run_migrations
from service.app import create_app
from service.settings import Settings

T = TypeVar("T")


def load_settings() -> Settings:
    """Settings from the environment; a bad variable stops the command and is named."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise click.ClickException(f"bad configuration: {problems}") from None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # uvloop is optional (no wheels on every platform)
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


@click.group()
def main() -> None:
    """Wallet service: balances in Redis, a PostgreSQL ledger."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535))
def serve(host: str, port: int) -> None:
    """Run the HTTP API."""
    settings = load_settings()
    web.run_app(create_app(settings), host=host, port=port, print=None)


@main.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    settings = load_settings()

    async def upgrade() -> None:
        engine = connect_database(settings)
        try:
            await run_migrations(engine)
        finally:
            await engine.dispose()

    run(upgrade())
    click.echo("schema is up to date")
