"""Hundreds of concurrent deposits and transfers on a few users, over several connections."""

import asyncio
import random
from collections import Counter

from service.domain.refusals import INSUFFICIENT_FUNDS, Refused
from service.redis.client import connect_redis
from service.redis.money import Accepted, MoneyScripts
from service.redis.types import RedisClient
from service.settings import Settings
from tests.support.helpers import balance, stream_transactions

USERS = (1, 2, 3, 4)
CONNECTIONS = 6
OPERATIONS = 600


async def test_concurrent_operations_conserve_money(
    redis_url: str, redis_client: RedisClient
) -> None:
    settings = Settings(redis_url=redis_url, redis_max_connections=8)
    clients = [connect_redis(settings) for _ in range(CONNECTIONS)]
    scripts = [MoneyScripts(client, settings) for client in clients]
    for user_id in USERS:
        await scripts[0].register_user(user_id)
    rng = random.Random(20261126)
    accepted: dict[int, tuple[int | None, int, int]] = {}
    refused = Counter[str]()

    async def one(n: int) -> None:
        money = scripts[n % CONNECTIONS]
        amount = rng.randint(1, 5_000)
        if rng.random() < 0.35:
            to = rng.choice(USERS)
            result: Accepted = await money.deposit(to, amount)
            accepted[result.txn_id] = (None, to, amount)
            return
        sender, recipient = rng.sample(USERS, 2)
        try:
            result = await money.transfer(sender, recipient, amount)
        except Refused as refusal:
            if refusal.refusal is not INSUFFICIENT_FUNDS:
                raise
            refused["insufficient_funds"] += 1
            return
        accepted[result.txn_id] = (sender, recipient, amount)

    await asyncio.gather(*(one(n) for n in range(OPERATIONS)))
    for client in clients:
        await client.aclose()

    assert len(accepted) + refused.total() == OPERATIONS
    assert refused["insufficient_funds"] > 0, "the mix must exercise refusals under contention"
    expected = dict.fromkeys(USERS, 0)
    deposited = 0
    for sender, recipient, amount in accepted.values():
        expected[recipient] += amount
        if sender is None:
            deposited += amount
        else:
            expected[sender] -= amount
    actual = {u: await balance(redis_client, u) for u in USERS}
    assert actual == expected
    assert min(actual.values()) >= 0
    assert sum(actual.values()) == deposited

    # The stream holds exactly one record per accepted operation, with ids 1..N in order,
    # and replaying it in order reproduces every balance it recorded.
    records = await stream_transactions(redis_client)
    assert [r.txn_id for r in records] == sorted(accepted) == list(range(1, len(accepted) + 1))
    replayed = dict.fromkeys(USERS, 0)
    for r in records:
        assert (r.from_user_id, r.to_user_id, r.amount_kopecks) == accepted[r.txn_id]
        replayed[r.to_user_id] += r.amount_kopecks
        assert r.to_balance_kopecks == replayed[r.to_user_id]
        if r.from_user_id is not None:
            replayed[r.from_user_id] -= r.amount_kopecks
            assert r.from_balance_kopecks == replayed[r.from_user_id] >= 0
    assert replayed == actual
