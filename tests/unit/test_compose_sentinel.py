"""docker-compose.yml's "sentinel" profile, checked without Docker (none runs on the CI
machine): a durable replica of the compose file's Redis, three Sentinels watching it, and
an API and a writer that reach the primary through them and wait for the replica."""

import re
from pathlib import Path
from typing import Any

import yaml

from service.settings import Settings, sentinel_url

ROOT = Path(__file__).parents[2]
SERVICES: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
PROFILE = ["redis-replica", "sentinel-1", "sentinel-2", "sentinel-3", "api-sentinel",
           "writer-sentinel"]  # fmt: skip
SENTINELS = ["sentinel-1", "sentinel-2", "sentinel-3"]


def option(command: list[str], name: str) -> list[str]:
    at = command.index(name)
    return command[at + 1 : at + 3]


def test_only_the_profile_starts_them() -> None:
    for name in PROFILE:
        assert SERVICES[name]["profiles"] == ["sentinel"], name
    for name in ("redis", "postgres", "migrate", "api", "writer"):
        assert "profiles" not in SERVICES[name], name


def test_the_replica_is_as_durable_as_the_primary_and_copies_it() -> None:
    command = SERVICES["redis-replica"]["command"]
    assert option(command, "--appendonly")[0] == "yes"
    assert option(command, "--appendfsync")[0] == "always"
    assert option(command, "--maxmemory-policy")[0] == "noeviction"
    assert option(command, "--replicaof") == ["redis", "6379"]
    assert any(volume.endswith(":/data") for volume in SERVICES["redis-replica"]["volumes"])


def test_three_sentinels_watch_the_primary_with_a_quorum_of_two() -> None:
    for name in SENTINELS:
        script = SERVICES[name]["command"][-1]
        assert re.search(r"^sentinel monitor wallet redis 6379 2$", script, re.MULTILINE)
        assert re.search(r"^port 26379$", script, re.MULTILINE)
        assert "redis-cli" in SERVICES[name]["healthcheck"]["test"]


def test_the_api_and_the_writer_find_the_primary_through_the_sentinels() -> None:
    readme = (ROOT / "README.md").read_text()
    assert (
        "docker compose --profile sentinel up --build redis-replica sentinel-1 sentinel-2"
        " sentinel-3 api-sentinel writer-sentinel"
    ) in readme
    for name, plain in (("api-sentinel", "api"), ("writer-sentinel", "writer")):
        service = SERVICES[name]
        assert service["command"] == SERVICES[plain]["command"]
        env = service["environment"]
        url = sentinel_url(env["REDIS_URL"])
        assert url is not None
        assert url.sentinels == tuple((sentinel, 26379) for sentinel in SENTINELS)
        assert url.service_name == "wallet"
        assert env["WALLET_REDIS_MIN_REPLICAS"] == "1"
        # Every other setting as the plain service has it.
        others = {
            k: v for k, v in env.items() if k not in ("REDIS_URL", "WALLET_REDIS_MIN_REPLICAS")
        }
        assert others == {
            k: v for k, v in SERVICES[plain]["environment"].items() if k != "REDIS_URL"
        }
        Settings(
            redis_url=env["REDIS_URL"], redis_min_replicas=int(env["WALLET_REDIS_MIN_REPLICAS"])
        )
        for sentinel in SENTINELS:
            assert service["depends_on"][sentinel]["condition"] == "service_healthy"
