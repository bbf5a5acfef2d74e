"""Login throttling through HTTP on a real Redis Cluster (tests/support/cluster.py): each
login script touches the keys of one slot, the username's or the address's, and the policy
is the one tests/test_http_login_throttling.py checks on one Redis."""

from collections.abc import Iterator
from ipaddress import ip_network
from pathlib import Path

import pytest
from pytest_aiohttp import AiohttpClient
from redis.crc import key_slot
from sqlalchemy.ext.asyncio import AsyncEngine

from service.http.app import create_app
from service.redis import keyspace
from service.settings import Settings
from tests.support.cluster import ClusterDeployment, cluster_deployment
from tests.support.http_helpers import PASSWORD, log_in, sign_up

PROXY = ip_network("127.0.0.1/32")  # the test client's own address plays the proxy


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterDeployment]:
    with cluster_deployment(tmp_path / "cluster") as deployment:
        yield deployment


def test_a_username_keys_share_a_slot_and_an_address_has_its_own() -> None:
    slots = {
        key_slot(key.encode())
        for key in (
            keyspace.login_failures_of_user_at_address("Victim", "203.0.113.5"),
            keyspace.login_failing_addresses_of_user("victim"),
            keyspace.login_lock_of_user("VICTIM"),
        )
    }
    assert len(slots) == 1
    assert key_slot(keyspace.login_failures_of_address("203.0.113.5").encode()) not in slots


async def test_failing_logins_are_refused_then_the_right_one_elsewhere_logs_in(
    aiohttp_client: AiohttpClient,
    app_settings: Settings,
    db_engine: AsyncEngine,
    cluster: ClusterDeployment,
) -> None:
    settings = app_settings.model_copy(
        update={"redis_url": cluster.url(), "trusted_proxies": (PROXY,)}
    )
    client = await aiohttp_client(create_app(settings))
    await sign_up(client, "victim")
    attacker = "203.0.113.5"
    for _ in range(4):  # three free failures, then the fourth makes the next try wait
        assert (await log_in(client, "victim", "wrong password", attacker)).status == 401
    refused = await log_in(client, "victim", PASSWORD, attacker)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert (await log_in(client, "victim", PASSWORD, "198.51.100.7")).status == 200
