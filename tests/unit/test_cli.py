"""The command line as an operator meets it."""

import pytest
from click.testing import CliRunner

from service.cli.main import main


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
