"""The command line as an operator meets it."""

from importlib.metadata import version
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.http.openapi import build_spec


@pytest.mark.parametrize(
    "command", ["serve", "writer", "migrate", "replay", "reconcile", "rebuild", "loadtest"]
)
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WALLET_WRITER_BATCH_SIZE", "0"),
        ("WALLET_SESSION_IDLE_TIMEOUT_S", "soon"),
        ("WALLET_COOKIE_SECURE", "maybe"),
    ],
)
def test_a_bad_setting_stops_the_command_and_is_named(variable: str, value: str) -> None:
    result = CliRunner().invoke(main, ["migrate"], env={variable: value})
    assert result.exit_code == 1
    assert f"bad configuration: {variable}:" in result.output


def test_a_lost_replys_outcome_must_outlive_the_wait_for_it() -> None:
    env = {"WALLET_REQUEST_OUTCOME_TTL_S": "15", "WALLET_REQUEST_OUTCOME_WAIT_MS": "10000"}
    result = CliRunner().invoke(main, ["migrate"], env=env)
    assert result.exit_code == 1
    assert "WALLET_REQUEST_OUTCOME_TTL_S (15 s) must be longer than" in result.output
    assert "(15000 ms)" in result.output


def test_embedded_mode_is_one_process() -> None:
    result = CliRunner().invoke(main, ["serve", "--embedded", "--workers", "2"])
    assert result.exit_code == 2
    assert "one process" in result.output


# Every command with the arguments it needs to start.
COMMANDS = {
    "serve": ["serve"],
    "writer": ["writer"],
    "migrate": ["migrate"],
    "replay": ["replay", "--from", "1"],
    "reconcile": ["reconcile"],
    "rebuild": ["rebuild"],
    "loadtest": [
        "loadtest",
        "--url", "http://127.0.0.1:1",
        "--users", "2",
        "--concurrency", "1",
        "--duration", "1",
    ],
}  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("variable", ["WALLET_COOKIE_SECUR", "wallet_cookie_secur"])
def test_an_unknown_wallet_variable_stops_every_command_and_is_named(
    command: str, variable: str
) -> None:
    """A typo must not leave the default in force without a word (here: no Secure cookie)."""
    result = CliRunner().invoke(main, COMMANDS[command], env={variable: "true"})
    assert result.exit_code == 1
    assert f"unknown configuration: {variable} " in result.output


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WALLET_METRICS_LISTEN", "9464"),
        ("WALLET_METRICS_LISTEN", "127.0.0.1:99999"),
        ("WALLET_WRITER_METRICS_LISTEN", "9465"),
        ("WALLET_WRITER_METRICS_LISTEN", "127.0.0.1:0"),
        ("WALLET_LOG_LEVEL", "LOUD"),
        ("WALLET_REQUEST_BODY_TIMEOUT_S", "3600"),
        ("WALLET_MAX_CONNECTIONS", "0"),
    ],
)
def test_the_serving_settings_are_bounded(variable: str, value: str) -> None:
    result = CliRunner().invoke(main, ["serve"], env={variable: value})
    assert result.exit_code == 1
    assert f"bad configuration: {variable}:" in result.output


def test_one_version_everywhere() -> None:
    """The package's version, as `wallet --version`, the OpenAPI document and the changelog
    give it."""
    package = version("wallet-service")
    result = CliRunner().invoke(main, ["--version"])
    assert (result.exit_code, result.output) == (0, f"wallet, version {package}\n")
    assert build_spec()["info"]["version"] == package
    changelog = (Path(__file__).parents[2] / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"\n## {package} " in changelog
