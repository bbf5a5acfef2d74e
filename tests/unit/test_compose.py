"""docker-compose.yml, the Dockerfile and .dockerignore, checked without Docker (none runs on
the CI machine): against each other, against the service's settings and routes, and
against what README.md says of them. tests/test_writer_process.py and
tests/test_observability.py run the healthcheck commands against a real writer and API."""

import fnmatch
import json
import re
import shlex
from urllib.parse import urlsplit

from aiohttp import web
from click.testing import CliRunner

from service.cli.main import main
from service.http.routes import setup_routes
from service.http.writer_metrics import create_writer_metrics_app
from service.ledger.writer import WriterStats
from service.settings import Settings
from tests.support.container_files import (
    ROOT,
    compose_services,
    dockerfile,
    image_healthcheck,
    stages,
)

SERVICES = compose_services()
README = (ROOT / "README.md").read_text()
# The README's prose with its line breaks as spaces.
README_TEXT = " ".join(README.split())
LONG_RUNNING = ("redis", "postgres", "api", "writer")
# The "sentinel" profile's (tests/unit/test_compose_sentinel.py): long-running too.
SENTINEL_PROFILE = (
    "redis-replica",
    "sentinel-1",
    "sentinel-2",
    "sentinel-3",
    "api-sentinel",
    "writer-sentinel",
)
_URL = re.compile(r"urlopen\('([^']+)'")


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def served_paths(app: web.Application) -> set[str]:
    return {resource.canonical for resource in app.router.resources()}


def api_paths() -> set[str]:
    app = web.Application()
    setup_routes(app)
    return served_paths(app)


def healthcheck_url(test: list[str]) -> tuple[int, str]:
    """(port, path) of a python-urllib healthcheck command."""
    urls = _URL.findall(" ".join(test))
    assert len(urls) == 1, test
    parts = urlsplit(urls[0])
    assert parts.hostname == "127.0.0.1", test
    assert parts.port is not None, test
    return parts.port, parts.path


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


def test_redis_is_durable_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = redis["command"]
    assert option(command, "--appendonly") == "yes"
    assert option(command, "--appendfsync") == "always"
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]


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
    runner = CliRunner()
    for name in ("migrate", "api", "writer"):
        command = SERVICES[name]["command"]
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert env["REDIS_URL"].startswith("redis://")
        assert shlex.join(command) in README, f"README.md does not show {shlex.join(command)}"
        result = runner.invoke(main, [*command[1:], "--help"])
        assert result.exit_code == 0, result.output


def test_every_long_running_service_has_a_healthcheck_and_the_one_shot_none() -> None:
    for name in (*LONG_RUNNING, *SENTINEL_PROFILE):
        test = SERVICES[name]["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL"), name
    # The image's HEALTHCHECK probes the API, which the migration does not run.
    assert SERVICES["migrate"]["healthcheck"] == {"disable": True}
    assert set(SERVICES) == {*LONG_RUNNING, *SENTINEL_PROFILE, "migrate"}
    for name, plain in (("api-sentinel", "api"), ("writer-sentinel", "writer")):
        assert SERVICES[name]["healthcheck"] == SERVICES[plain]["healthcheck"], name


def test_the_api_healthcheck_asks_readiness_on_the_port_it_serves() -> None:
    api = SERVICES["api"]
    port, path = healthcheck_url(api["healthcheck"]["test"])
    assert port == int(option(api["command"], "--port"))
    assert path == "/readyz"
    assert path in api_paths()
    assert f"the API `GET {path}`" in README_TEXT


def test_the_writer_healthcheck_asks_its_metrics_listener() -> None:
    writer = SERVICES["writer"]
    listen = writer["environment"]["WALLET_WRITER_METRICS_LISTEN"]
    port, path = healthcheck_url(writer["healthcheck"]["test"])
    assert port == port_of(listen)
    assert path == "/healthz"
    assert path in served_paths(create_writer_metrics_app(WriterStats()))
    assert f"the writer `GET {path}` on its metrics listener" in README_TEXT
    assert f"its metrics on `{listen}`" in README_TEXT


def test_metrics_reach_the_compose_network_but_are_not_published() -> None:
    for name, variable in (
        ("api", "WALLET_METRICS_LISTEN"),
        ("writer", "WALLET_WRITER_METRICS_LISTEN"),
    ):
        service = SERVICES[name]
        host, port = service["environment"][variable].rsplit(":", 1)
        assert host == "0.0.0.0", name  # a Prometheus container beside it can scrape
        assert port in [str(exposed) for exposed in service["expose"]], name
        published = service.get("ports", [])
        assert not any(str(entry).endswith(f":{port}") for entry in published), name
    api = SERVICES["api"]
    assert port_of(api["environment"]["WALLET_METRICS_LISTEN"]) != int(
        option(api["command"], "--port")
    )


def test_the_readme_gives_the_metrics_listeners_as_settings_and_compose_have_them() -> None:
    defaults = Settings()
    environment = SERVICES["writer"]["environment"]
    for variable, default in (
        ("WALLET_METRICS_LISTEN", defaults.metrics_listen),
        ("WALLET_WRITER_METRICS_LISTEN", defaults.writer_metrics_listen),
    ):
        row = f"| `{variable}` | `{default}` | "
        assert row in README, row
        line = README[README.index(row) :].splitlines()[0]
        assert f"(compose: `{environment[variable]}`" in line, line


def test_the_image_is_built_in_two_stages_on_one_base_pinned_by_digest() -> None:
    found = stages()
    assert list(found) == ["build", "runtime"]
    bases = {found[name][0][1].split()[0] for name in found}
    assert len(bases) == 1, bases
    base = bases.pop()
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base
    assert f"`{base.split('@')[0]}` pinned by digest" in README_TEXT
    build = " ".join(arguments for keyword, arguments in found["build"] if keyword == "RUN")
    assert "pip wheel" in build
    assert "--no-deps" in build


def test_the_runtime_stage_installs_only_the_wheel_with_the_constraints() -> None:
    runtime = stages()["runtime"]
    copies = [arguments.split() for keyword, arguments in runtime if keyword == "COPY"]
    assert sorted(copy[0] for copy in copies) == ["--from=build", "constraints.txt"]
    installs = [arguments for keyword, arguments in runtime if keyword == "RUN"]
    assert len(installs) == 1
    assert (
        "pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/*.whl"
        in installs[0]
    )


def test_the_image_runs_as_a_user_and_checks_that_the_api_is_alive() -> None:
    runtime = dict(stages()["runtime"])
    assert runtime["USER"] not in ("root", "0")
    assert f"useradd --system --create-home {runtime['USER']}" in runtime["RUN"]
    command = json.loads(runtime["CMD"])
    check = image_healthcheck()
    assert check[:2] == ["python", "-c"]
    port, path = healthcheck_url(check)
    assert port == int(option(command, "--port")) == int(runtime["EXPOSE"])
    # Alive, not ready: a restart cures no outage of Redis or the database.
    assert path == "/healthz"
    assert path in api_paths()
    assert f"checks its own health with `GET {path}`" in README_TEXT


def _ignored(path: str, patterns: list[str]) -> bool:
    return any(
        fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removeprefix("**/"))
        for pattern in patterns
    )


def test_the_build_context_holds_what_the_image_copies_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for keyword, arguments in dockerfile()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert copied
    assert not [source for source in copied if _ignored(source, patterns)]
    left_out = (".git", ".github", ".ci", "tests", "benchmarks", "docs", "deploy", "wallet-data")
    assert not [name for name in left_out if not _ignored(name, patterns)]
    # Whatever git ignores (virtualenvs, caches, builds, local data) stays out too.
    for line in (ROOT / ".gitignore").read_text().splitlines():
        entry = line.strip().strip("/")
        assert _ignored(entry.replace("*", "x"), patterns), entry
