"""docker-compose.yml and the Dockerfile as the tests read them, and their healthcheck
commands run here against a real process (Docker does not run on the CI machine)."""

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[2]
_LOOPBACK_URL = re.compile(r"http://127\.0\.0\.1:\d+/")
HEALTHCHECK_TIMEOUT_S = 30.0


def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    return services


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments left out."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's stages by name, each with its FROM first."""
    found: dict[str, list[tuple[str, str]]] = {}
    for keyword, arguments in dockerfile():
        if keyword == "FROM":
            name = arguments.split()[-1]
            found[name] = []
        found[name].append((keyword, arguments))
    return found


def image_healthcheck() -> list[str]:
    """The command of the Dockerfile's HEALTHCHECK (exec form)."""
    arguments = dict(stages()["runtime"])["HEALTHCHECK"]
    command: list[str] = json.loads(arguments.split(" CMD ", 1)[1])
    return command


def compose_healthcheck(service: str) -> list[str]:
    """The command of a compose service's healthcheck, without its leading "CMD"."""
    test: list[str] = compose_services()[service]["healthcheck"]["test"]
    assert test[0] == "CMD", test
    return test[1:]


def run_healthcheck(command: list[str], port: int) -> int:
    """Runs a healthcheck command here, its python this one's and its loopback URL's port
    ``port``; returns its exit status (0: healthy)."""
    assert command[0] == "python", command
    here = [
        sys.executable,
        *(_LOOPBACK_URL.sub(f"http://127.0.0.1:{port}/", c) for c in command[1:]),
    ]
    return subprocess.run(
        here, capture_output=True, timeout=HEALTHCHECK_TIMEOUT_S, check=False
    ).returncode
