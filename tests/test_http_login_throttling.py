"""Login throttling through HTTP, against real Redis: who is counted, and for how long.

The policy is in README ("Login throttling"); every number is a setting.
"""

import asyncio
from ipaddress import ip_network

from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.helpers import snapshot
from tests.support.http_helpers import PASSWORD, MakeClient, log_in, sign_up

PROXY = ip_network("127.0.0.1/32")  # the test client's own address plays the proxy


async def test_clients_behind_a_trusted_proxy_are_counted_each_by_its_own_address(
    make_client: MakeClient,
) -> None:
    client = await make_client(trusted_proxies=(PROXY,), login_max_failures_per_address=3)
    await sign_up(client, "victim")
    for n in range(3):
        assert (await log_in(client, f"guess{n}", "wrong password", "203.0.113.5")).status == 401
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.5")).status == 429
    # Another client behind the same proxy is not locked out by the first one.
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.6")).status == 200
    # Hops the client wrote itself, left of what the proxy appended, change nothing.
    spoofed = await log_in(client, "victim", PASSWORD, "198.51.100.1, 203.0.113.5")
    assert spoofed.status == 429


async def test_without_trusted_proxies_a_forged_header_does_not_escape_the_limit(
    make_client: MakeClient,
) -> None:
    client = await make_client(login_max_failures_per_address=3)
    await sign_up(client, "victim")
    for n in range(3):
        response = await log_in(client, f"guess{n}", "wrong password", f"203.0.113.{n}")
        assert response.status == 401
    assert (await log_in(client, "victim", PASSWORD, "203.0.113.99")).status == 429


async def test_a_client_that_keeps_failing_is_slowed_then_refused(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(trusted_proxies=(PROXY,))
    await sign_up(client, "victim")
    attacker = "203.0.113.5"
    pair = keyspace.login_failures_of_user_at_address("victim", attacker)
    for _ in range(3):  # free
        assert (await log_in(client, "victim", "wrong password", attacker)).status == 401
    for wait_s in (1, 2, 4, 8, 16, 32):  # then each failure doubles the wait for the next
        assert (await log_in(client, "victim", "wrong password", attacker)).status == 401
        before = await snapshot(redis_client)
        slowed = await log_in(client, "victim", PASSWORD, attacker)  # the right one too
        assert slowed.status == 429
        assert slowed.headers["Retry-After"] == str(wait_s)
        assert await snapshot(redis_client) == before  # a refused attempt writes nothing
        await redis_client.hset(pair, "next_at_ms", 0)  # as if the wait were over
    assert (await log_in(client, "victim", "wrong password", attacker)).status == 401  # the 10th
    refused = await log_in(client, "victim", PASSWORD, attacker)
    assert refused.status == 429
    assert 890 <= int(refused.headers["Retry-After"]) <= 900  # until its 15 minutes end
    assert (await log_in(client, "victim", PASSWORD, "198.51.100.7")).status == 200


async def test_the_right_password_from_an_address_that_has_not_been_failing_logs_in(
    make_client: MakeClient,
) -> None:
    """Attackers at nine addresses (one short of an attack from many) fail for as long as
    they like; the user, elsewhere, still logs in."""
    client = await make_client(trusted_proxies=(PROXY,))
    await sign_up(client, "victim")
    for n in range(9):
        for attempt in range(12):
            response = await log_in(client, "victim", f"guess {attempt:04d}", f"203.0.113.{n}")
            assert response.status in (401, 429)
            if response.status == 429:
                assert int(response.headers["Retry-After"]) >= 1
    assert (await log_in(client, "victim", PASSWORD, "198.51.100.7")).status == 200


async def test_a_username_attacked_from_many_addresses_is_locked_for_a_bounded_time(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(
        trusted_proxies=(PROXY,),
        login_attack_addresses=5,
        login_attack_lock_s=1,
        login_attack_cooldown_s=3600,
    )
    await sign_up(client, "victim")
    await sign_up(client, "bystander")
    for n in range(5):
        assert (await log_in(client, "victim", "wrong password", f"203.0.113.{n}")).status == 401
    locked = await log_in(client, "victim", PASSWORD, "198.51.100.7")
    assert locked.status == 429
    assert locked.headers["Retry-After"] == "1"
    # The attack goes on: it does not make the lock longer, nor any other user's.
    lock = keyspace.login_lock_of_user("victim")
    ends_ms = await redis_client.get(lock)
    for n in range(5, 20):
        assert (await log_in(client, "victim", "wrong password", f"203.0.113.{n}")).status == 429
    assert await redis_client.get(lock) == ends_ms
    assert (await log_in(client, "bystander", PASSWORD, "198.51.100.7")).status == 200
    # The lock ends by itself; the attack from new addresses cannot renew it for an hour.
    await asyncio.sleep(1.1)
    for n in range(20, 40):
        assert (await log_in(client, "victim", "wrong password", f"203.0.113.{n}")).status == 401
    assert await redis_client.scard(keyspace.login_failing_addresses_of_user("victim")) == 5
    assert (await log_in(client, "victim", PASSWORD, "198.51.100.7")).status == 200


async def test_a_refused_address_makes_redis_hold_no_new_keys(
    make_client: MakeClient, redis_client: RedisClient
) -> None:
    client = await make_client(login_max_failures_per_address=3)
    for n in range(3):
        assert (await log_in(client, f"guess{n}", "wrong password")).status == 401
    before = await snapshot(redis_client)
    for n in range(50):  # a new username each time: the old design made a key for each
        refused = await log_in(client, f"flood{n}", "wrong password")
        assert refused.status == 429
        assert 890 <= int(refused.headers["Retry-After"]) <= 900
    assert await snapshot(redis_client) == before


async def test_logins_in_flight_at_once_do_not_slow_each_other(make_client: MakeClient) -> None:
    client = await make_client()
    await sign_up(client, "busy")
    responses = await asyncio.gather(*(log_in(client, "busy", PASSWORD) for _ in range(10)))
    assert [r.status for r in responses] == [200] * 10
