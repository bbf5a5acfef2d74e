"""The Lua scripts ship inside the installed package, not only in the source tree."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

from service.http.api_docs import ASSETS
from service.redis.scripts import load_script_source

SOURCE_SCRIPTS = sorted((Path(__file__).parents[2] / "lua").glob("*.lua"))


def _run_installed(code: str, cwd: Path, *args: str) -> str:
    """What ``code`` prints, run with -I in another working directory: the source tree is
    not on sys.path, only the installed package."""
    command = [sys.executable, "-I", "-c", code, *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True).stdout


def test_installed_package_loads_every_script(tmp_path: Path) -> None:
    code = (
        "import json, sys; from service.redis.scripts import load_script_source; "
        "print(json.dumps({n: load_script_source(n) for n in sys.argv[1:]}))"
    )
    names = [p.stem for p in SOURCE_SCRIPTS]
    out = _run_installed(code, tmp_path, *names)
    assert set(names) == {
        "advance_epoch",
        "deposit",
        "register_user",
        "transfer",
        "transfer_expect",
        "transfer_credit",
        "transfer_abort",
        "transfer_settle",
        "transfer_void",
        "stream_tail",
        "restore_wallet",
        "restore_idempotency",
        "restore_hold",
        "reconcile_snapshot",
        "restore_reservation",
        "restore_credit",
        "restore_lost_reservation",
        "dead_letter",
        "writer_mark",
        "refund_login_attempt",
        "start_session",
        "end_sessions",
        "login_address_attempt",
        "login_address_give_back",
        "login_attempt",
        "login_succeeded",
        "login_failed",
        "fixed_window_limit",
        "lookup_request",
        "hold_create",
        "hold_capture",
        "hold_void",
        "hold_capture_across",
        "hold_void_across",
        "claim_key",
        "complete_claim",
        "hold_expire",
        "read_balance",
        "transfer_batch",
        "refund",
        "follow_primary",
        "restart_counter",
    }
    # The same text, includes expanded, as the source tree gives (this process imports it).
    installed = json.loads(out)
    assert installed == {name: load_script_source(name) for name in names}
    assert all("-- @include" not in source for source in installed.values())


def test_every_script_opens_with_its_interface_header() -> None:
    for path in SOURCE_SCRIPTS:
        header = path.read_text(encoding="utf-8").split("\n\n", 1)[0]
        assert header.startswith(f"-- {path.stem}:"), path
        assert "KEYS[1]" in header, path
        assert "ARGV[1]" in header or "-- ARGV     none" in header, path
        assert "Returns" in header, path


def test_installed_package_ships_the_migrations(tmp_path: Path) -> None:
    code = (
        "from alembic.script import ScriptDirectory; "
        "from alembic.util import coerce_resource_to_filename as path; "
        "print(ScriptDirectory(path('persistence:migrations')).get_current_head())"
    )
    out = _run_installed(code, tmp_path)
    assert out.strip() == "0011"


def test_the_packages_say_they_are_typed(tmp_path: Path) -> None:
    """PEP 561: an application's type checker reads our annotations."""
    code = (
        "from importlib import resources; "
        "print(all(resources.files(p).joinpath('py.typed').is_file()"
        " for p in ('service', 'persistence')))"
    )
    out = _run_installed(code, tmp_path)
    assert out.strip() == "True"


def test_installed_package_ships_swagger_ui_with_its_license(tmp_path: Path) -> None:
    """GET /api/docs serves these from the installed package (no CDN at run time); CI
    installs the wheel, so this is the wheel's content."""
    source = Path(__file__).parents[2] / "service" / "http" / "swagger_ui"
    names = sorted(path.name for path in source.iterdir())
    assert {*ASSETS, "LICENSE", "NOTICE", "swagger-ui-bundle.js.LICENSE.txt"} == set(names)
    code = (
        "import hashlib, json, sys; from importlib import resources; "
        "folder = resources.files('service.http').joinpath('swagger_ui'); "
        "print(json.dumps({n: hashlib.sha256(folder.joinpath(n).read_bytes()).hexdigest()"
        " for n in sys.argv[1:]}))"
    )
    out = _run_installed(code, tmp_path, *names)
    assert json.loads(out) == {
        name: hashlib.sha256((source / name).read_bytes()).hexdigest() for name in names
    }
    assert "Apache License" in (source / "LICENSE").read_text(encoding="utf-8")
