"""`wallet serve --embedded`: one process, in-process Redis, an SQLite ledger that survives."""

from pathlib import Path

from pytest_aiohttp import AiohttpClient

from service.cli.embedded import create_embedded_app, embedded_settings
from service.redis.client import MEMORY_URL, connect_redis
from service.settings import Settings
from tests.support.http_helpers import Client, login, new_user


async def start(aiohttp_client: AiohttpClient, settings: Settings) -> Client:
    return await aiohttp_client(create_embedded_app(settings))


async def test_a_restart_rebuilds_balances_history_and_idempotency_from_the_ledger(
    aiohttp_client: AiohttpClient, app_settings: Settings, tmp_path: Path
) -> None:
    settings = embedded_settings(app_settings, tmp_path / "data")
    memory = connect_redis(settings)
    await memory.flushall()
    client = await start(aiohttp_client, settings)
    alice = await new_user(client, "alice", deposit_kopecks=10_000)
    bob = await new_user(client, "bob")
    key = {"Idempotency-Key": "pay-1"}
    status, sent = await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 2_500}, **key
    )
    assert status == 201
    await client.close()  # a graceful stop drains the writer completely

    await memory.flushall()  # what a new process starts with
    client = await start(aiohttp_client, settings)
    alice = await login(client, "alice")
    bob = await login(client, "bob")
    assert (await alice.balance(client), await bob.balance(client)) == (7_500, 2_500)
    assert (await bob.get(client, "/api/balance/transfer/"))[1]["items"] == [
        dict(sent, direction="in")
    ]
    # The retry within 24 hours is recognised across the restart: no money moves.
    assert await alice.post(
        client, "/api/balance/transfer/", {"to_user_id": bob.id, "amount": 2_500}, **key
    ) == (201, sent)
    status, fresh = await alice.post(client, "/api/balance/deposit/", {"amount": 1})
    assert status == 201
    assert fresh["id"] > sent["id"]  # the id counter was restored
    assert settings.redis_url == MEMORY_URL
    assert (tmp_path / "data" / "ledger.sqlite3").exists()
    await memory.aclose()
