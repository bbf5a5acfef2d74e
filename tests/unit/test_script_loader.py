"""load_script_source's `-- @include` handling, on scripts written to a temporary lua/
(no Redis needed), and on the real scripts."""

from importlib import resources
from pathlib import Path

import pytest

from service.redis.scripts import ScriptIncludeError, load_script_source


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "includes").mkdir()
    (tmp_path / "includes" / "a.lua").write_text("local function a() end\n")
    (tmp_path / "includes" / "b.lua").write_text("local function b() end\n")
    return tmp_path


def write(root: Path, relative: str, text: str) -> None:
    (root / relative).write_text(text)


def test_a_script_without_includes_is_returned_as_it_is(root: Path) -> None:
    write(root, "s.lua", "-- s: mentions @include in prose\nreturn 1\n")
    assert load_script_source("s", root) == "-- s: mentions @include in prose\nreturn 1\n"


def test_each_include_line_is_replaced_in_place(root: Path) -> None:
    write(root, "s.lua", "-- s\n\n-- @include a\n-- @include b\n\nreturn a()\n")
    assert load_script_source("s", root) == (
        "-- s\n\nlocal function a() end\n\nlocal function b() end\n\n\nreturn a()\n"
    )


def test_the_same_include_twice_is_refused(root: Path) -> None:
    write(root, "s.lua", "-- @include a\n-- @include b\n-- @include a\nreturn 1\n")
    with pytest.raises(ScriptIncludeError, match=r"^s -> a: included twice"):
        load_script_source("s", root)


def test_an_include_that_includes_another_is_refused(root: Path) -> None:
    write(root, "includes/c.lua", "-- @include a\nlocal function c() return a() end\n")
    write(root, "s.lua", "-- @include c\nreturn 1\n")
    with pytest.raises(
        ScriptIncludeError, match=r"^s -> c -> a: an include cannot include another"
    ):
        load_script_source("s", root)


@pytest.mark.parametrize(
    ("files", "chain"),
    [
        ({"includes/c.lua": "-- @include c\n"}, "s -> c -> c"),
        ({"includes/c.lua": "-- @include d\n", "includes/d.lua": "-- @include c\n"}, "s -> c -> d"),
    ],
)
def test_a_cycle_is_refused(root: Path, files: dict[str, str], chain: str) -> None:
    for relative, text in files.items():
        write(root, relative, text)
    write(root, "s.lua", "-- @include c\nreturn 1\n")
    with pytest.raises(ScriptIncludeError, match=rf"^{chain}: an include cannot include"):
        load_script_source("s", root)


def test_a_missing_include_is_refused(root: Path) -> None:
    write(root, "s.lua", "-- @include a\n-- @include nope\nreturn 1\n")
    with pytest.raises(ScriptIncludeError, match=r"^s -> nope: no file includes/nope\.lua$"):
        load_script_source("s", root)


@pytest.mark.parametrize(
    "line",
    [
        "-- @include a ",  # trailing blank
        "  -- @include a",  # indented
        "--@include a",
        "-- @include",
        "-- @include a b",
        "-- @include ../a",
    ],
)
def test_a_malformed_include_line_is_refused(root: Path, line: str) -> None:
    """Not left in place as a comment: the script would then call functions it lacks."""
    write(root, "s.lua", f"-- s\n{line}\nreturn 1\n")
    with pytest.raises(ScriptIncludeError, match=r"^s: malformed include line"):
        load_script_source("s", root)


SCRIPTS = sorted(
    entry.name.removesuffix(".lua")
    for entry in resources.files("lua").iterdir()
    if entry.name.endswith(".lua")
)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_loads_with_each_helper_defined_once(name: str) -> None:
    source = load_script_source(name)
    assert "@include" not in source
    functions = [line for line in source.splitlines() if line.startswith("local function ")]
    assert len(functions) == len(set(functions)), functions


def test_the_money_scripts_share_one_idempotency_block() -> None:
    includes = resources.files("lua").joinpath("includes")
    shared = includes.joinpath("idempotency.lua").read_text(encoding="utf-8")
    fingerprint = includes.joinpath("fingerprint.lua").read_text(encoding="utf-8")
    outcome = includes.joinpath("request_outcome.lua").read_text(encoding="utf-8")
    holds = includes.joinpath("holds.lua").read_text(encoding="utf-8")
    for name in ("deposit", "transfer", "hold_create", "hold_capture", "hold_void"):
        source = load_script_source(name)
        assert source.count(shared) == 1
        assert source.count(fingerprint) == 1
        assert source.count(outcome) == 1
        # No copy of either lookup left behind.
        # (holds.lua reads a wallet's amounts: not a lookup of either kind.)
        rest = source.replace(shared, "").replace(outcome, "").replace(holds, "")
        assert "HMGET" not in rest or name in ("hold_capture", "hold_void")


def test_a_missing_script_names_what_may_shadow_it(root: Path) -> None:
    with pytest.raises(ScriptIncludeError, match=r"^absent: no absent\.lua in .*'lua' shadowing"):
        load_script_source("absent", root)
