"""docker-compose.yml, checked without Docker (none runs on the CI machine)."""

import shlex
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from service.cli.main import main

ROOT = Path(__file__).parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_redis_is_durable_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "always"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert "healthcheck" in redis


def test_postgres_has_a_volume_and_a_healthcheck() -> None:
    postgres = SERVICES["postgres"]
    assert any("/var/lib/postgresql/data" in volume for volume in postgres["volumes"])
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


def test_migrate_runs_once_before_the_api_and_the_writer() -> None:
    assert SERVICES["migrate"]["command"] == ["wallet", "migrate"]
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("api", "writer"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert int(option(SERVICES["api"]["command"], "--workers")) >= 2
    assert SERVICES["writer"]["command"] == ["wallet", "writer"]


def test_compose_commands_are_real_and_the_readme_shows_them() -> None:
    readme = (ROOT / "README.md").read_text()
    runner = CliRunner()
    for name in ("migrate", "api", "writer"):
        command = SERVICES[name]["command"]
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["REDIS_URL"].startswith("redis://")
        assert shlex.join(command) in readme, f"README.md does not show {shlex.join(command)}"
        result = runner.invoke(main, [*command[1:], "--help"])
        assert result.exit_code == 0, result.output


def test_metrics_reach_the_compose_network_but_are_not_published() -> None:
    api = SERVICES["api"]
    host, port = api["environment"]["WALLET_METRICS_LISTEN"].rsplit(":", 1)
    assert host == "0.0.0.0"  # a Prometheus container beside it can scrape
    assert port in [str(exposed) for exposed in api["expose"]]
    assert not any(str(published).endswith(f":{port}") for published in api["ports"])
    assert port != option(api["command"], "--port")
