"""constraints.txt pins every distribution `pip install '.[test]'` installs, at versions
pyproject.toml allows, and CI installs with it (README, "Run the tests")."""

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parents[2]
PACKAGE = canonicalize_name("wallet-service")


def pins() -> dict[NormalizedName, Version]:
    found: dict[NormalizedName, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, version = line.split("==")
        assert canonicalize_name(name) not in found, f"{name} is pinned twice"
        found[canonicalize_name(name)] = Version(version)
    return found


def _applies(requirement: Requirement, extras: frozenset[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras})


def installed_closure(name: str, extras: frozenset[str]) -> set[NormalizedName]:
    """Every distribution that installing ``name[extras]`` brings, read from the metadata
    of what is installed here."""
    seen: set[tuple[NormalizedName, frozenset[str]]] = set()
    todo = [(canonicalize_name(name), extras)]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for text in metadata.requires(current[0]) or []:
            requirement = Requirement(text)
            if _applies(requirement, current[1]):
                todo.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return {dist for dist, _ in seen}


def test_every_distribution_of_the_test_extra_is_pinned_once() -> None:
    wanted = installed_closure("wallet-service", frozenset({"test"})) - {PACKAGE}
    pinned = pins()
    assert PACKAGE not in pinned
    assert sorted(wanted - pinned.keys()) == [], "run .ci/refresh-constraints"
    # The embedded extra (README's first setup command) is inside the test extra.
    assert installed_closure("wallet-service", frozenset({"embedded"})) <= wanted | {PACKAGE}


def test_the_pins_are_versions_pyproject_allows() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [
        *project["dependencies"],
        *(text for group in project["optional-dependencies"].values() for text in group),
    ]
    pinned = pins()
    for text in declared:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == PACKAGE or not _applies(requirement, frozenset()):
            continue
        assert name in pinned, f"{text} is not pinned: run .ci/refresh-constraints"
        assert requirement.specifier.contains(pinned[name], prereleases=True), text


def test_ci_installs_with_the_constraints_and_the_readme_says_how() -> None:
    assert '-c constraints.txt ".[test]"' in (ROOT / ".ci" / "run").read_text()
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "pip install -c constraints.txt '.[test]'" in readme
    workflow = (ROOT / ".github" / "workflows" / "refresh-constraints.yml").read_text()
    assert "cron:" in workflow
    assert ".ci/refresh-constraints" in workflow
