"""docs/api.md says what the OpenAPI document says: the same endpoints, and for each the
same error codes (those every request may get are listed once, in a table of their own)."""

import re
from pathlib import Path

from service.http.openapi import build_spec

API_DOC = Path(__file__).parents[2] / "docs" / "api.md"
# `| POST /api/holds/{id}/capture/ | body | success | errors |`
_ROW = re.compile(r"^\| (GET|POST) (/api/\S*) \| .* \| (.*) \|$")
_CODE = re.compile(r"(\d{3}) `(\w+)`")


def _section(title: str) -> str:
    text = API_DOC.read_text(encoding="utf-8")
    start = text.index(f"\n{title}\n")
    end = text.find("\n#", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def _spec_codes() -> dict[tuple[str, str], set[tuple[int, str]]]:
    codes: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for path, operations in build_spec()["paths"].items():
        for method, operation in operations.items():
            listed = codes.setdefault((method.upper(), path), set())
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    found = re.findall(r"^- `(\w+)`:", response["description"], re.MULTILINE)
                    listed.update((int(status), code) for code in found)
    return codes


def _documented() -> dict[tuple[str, str], set[tuple[int, str]]]:
    rows: dict[tuple[str, str], set[tuple[int, str]]] = {}
    for line in _section("## Endpoints").splitlines():
        match = _ROW.match(line)
        if match:
            method, path, errors = match.groups()
            rows[(method, path)] = {(int(s), code) for s, code in _CODE.findall(errors)}
    return rows


def _every_request_may_get() -> set[tuple[int, str]]:
    rows = [
        line for line in _section("### Errors any request may get").splitlines() if line[:1] == "|"
    ]
    return {(int(s), code) for row in rows for s, code in _CODE.findall(row.split(" | ")[0])}


def test_the_endpoint_table_lists_what_the_document_lists() -> None:
    spec, documented = _spec_codes(), _documented()
    assert set(documented) == set(spec)
    common = _every_request_may_get()
    assert (503, "outcome_unknown") in common
    for operation, codes in spec.items():
        assert documented[operation] == codes - common, operation
        assert documented[operation].isdisjoint(common), operation


def test_the_common_errors_are_listed_by_the_document() -> None:
    listed = set().union(*_spec_codes().values())
    # internal_error (a bug) may answer anything and is in no operation's list.
    assert _every_request_may_get() - listed == {(500, "internal_error")}
