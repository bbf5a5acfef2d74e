"""REDIS_URL names the deployment (service/settings.py): a standalone Redis is left to
redis-py; a redis+sentinel:// or redis+cluster:// URL is read here, and a malformed one
stops every command."""

import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.settings import ClusterUrl, SentinelUrl, Settings, cluster_url, sentinel_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26380,sentinel-3:26381/wallet",
            SentinelUrl(
                (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3", 26381)), "wallet", 0
            ),
        ),
        (
            "redis+sentinel://127.0.0.1:26379/my.primary-1/3",
            SentinelUrl((("127.0.0.1", 26379),), "my.primary-1", 3),
        ),
        ("redis+sentinel://[::1]:26379/wallet/0", SentinelUrl((("::1", 26379),), "wallet", 0)),
    ],
)
def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database(
    url: str, expected: SentinelUrl
) -> None:
    assert sentinel_url(url) == expected


def test_a_standalone_url_is_not_a_sentinel_one() -> None:
    assert sentinel_url("redis://127.0.0.1:6379/0") is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://127.0.0.1:26379",  # no service name
        "redis+sentinel://127.0.0.1:26379/",
        "redis+sentinel://127.0.0.1/wallet",  # no port
        "redis+sentinel://127.0.0.1:0/wallet",
        "redis+sentinel://127.0.0.1:26379,/wallet",
        "redis+sentinel://127.0.0.1:26379/wallet/zero",
        "redis+sentinel://127.0.0.1:26379/wallet/0/more",
        "redis+sentinel://127.0.0.1:26379/wal let",
        "redis+sentinel://:secret@127.0.0.1:26379/wallet",  # credentials are not read
        "redis+sentinel://127.0.0.1:26379/wallet?db=1",
    ],
)
def test_a_malformed_sentinel_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^redis\+sentinel: "):
        sentinel_url(url)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+cluster://10.0.0.1:7000,10.0.0.2:7001,node-3:7002",
            ClusterUrl((("10.0.0.1", 7000), ("10.0.0.2", 7001), ("node-3", 7002))),
        ),
        ("redis+cluster://[::1]:7000", ClusterUrl((("::1", 7000),))),
    ],
)
def test_a_cluster_url_names_the_seed_nodes(url: str, expected: ClusterUrl) -> None:
    assert cluster_url(url) == expected


def test_other_urls_are_not_cluster_ones() -> None:
    assert cluster_url("redis://127.0.0.1:6379/0") is None
    assert cluster_url("redis+sentinel://127.0.0.1:26379/wallet") is None
    assert sentinel_url("redis+cluster://127.0.0.1:7000") is None


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://",  # no node
        "redis+cluster://127.0.0.1",  # no port
        "redis+cluster://127.0.0.1:70000",
        "redis+cluster://127.0.0.1:7000,",
        "redis+cluster://127.0.0.1:7000/0",  # a cluster has database 0 alone
        "redis+cluster://127.0.0.1:7000/",
        "redis+cluster://:secret@127.0.0.1:7000",  # credentials are not read
        "redis+cluster://127.0.0.1:7000?read_from_replicas=1",
        "redis+cluster://127.0.0.1:7000#x",
        "redis+cluster://" + ",".join(f"10.0.0.{n}:7000" for n in range(33)),
    ],
)
def test_a_malformed_cluster_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"^redis\+cluster: "):
        cluster_url(url)


def test_a_malformed_redis_url_stops_the_command_and_is_named() -> None:
    for url in ("redis+sentinel://h/", "redis+cluster://h:1/0"):
        result = CliRunner().invoke(main, ["migrate"], env={"REDIS_URL": url})
        assert result.exit_code == 1
        assert "bad configuration: REDIS_URL:" in result.output


def test_the_replicas_wait_must_fit_in_the_batch_deadline() -> None:
    env = {
        "WALLET_REDIS_MIN_REPLICAS": "1",
        "WALLET_REDIS_REPLICA_WAIT_MS": "2500",
        "WALLET_REDIS_SOCKET_TIMEOUT_MS": "5000",
    }
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 1
    assert "WALLET_REDIS_REPLICA_WAIT_MS (2500) must be less than half" in result.output
    # Without a replica to wait for, the wait is not used, and not checked (the command
    # then goes on, to a database that is not there).
    nowhere = {
        "WALLET_REDIS_MIN_REPLICAS": "0",
        "DATABASE_URL": "postgresql+asyncpg://127.0.0.1:1/x",
    }
    result = CliRunner().invoke(main, ["migrate"], env=env | nowhere)
    assert "bad configuration" not in result.output


def test_on_a_cluster_asking_and_its_call_need_batches_of_two() -> None:
    cluster = {"REDIS_URL": "redis+cluster://127.0.0.1:7000"}
    result = CliRunner().invoke(
        main, ["migrate"], env=cluster | {"WALLET_REDIS_PIPELINE_MAX_CALLS": "1"}
    )
    assert result.exit_code == 1
    assert "WALLET_REDIS_PIPELINE_MAX_CALLS must be at least 2 on a cluster" in result.output
    assert Settings(redis_pipeline_max_calls=1).redis_pipeline_max_calls == 1  # one Redis
