"""The catalog of refusals against the scripts that return them and the API that shows
them."""

import re
from pathlib import Path

import pytest

from service.domain import refusals
from service.domain.refusals import BY_LUA_OUTCOME, CATALOG, Refusal
from service.http.openapi import build_spec
from service.http.routes import OPERATIONS, refusals_of

LUA = Path(__file__).parents[2] / "lua"
# What a money script's header lists under Returns: `outcome "<name>"`.
_OUTCOME = re.compile(r'outcome "(\w+)"')
# Outcomes that are no refusal: money moved, or a bug on the caller's side.
_NOT_REFUSALS = {"ok", "invalid_argument"}
MONEY_SCRIPTS = [
    "deposit",
    "transfer",
    "hold_create",
    "hold_capture",
    "hold_void",
    "transfer_batch",
    "refund",
]


def _script_outcomes(name: str) -> set[str]:
    header = (LUA / f"{name}.lua").read_text(encoding="utf-8").split("\n\n", 1)[0]
    return set(_OUTCOME.findall(header)) - _NOT_REFUSALS


@pytest.mark.parametrize("script", MONEY_SCRIPTS)
def test_every_refusal_a_money_script_returns_is_in_the_catalog(script: str) -> None:
    outcomes = _script_outcomes(script)
    assert outcomes
    assert outcomes <= set(BY_LUA_OUTCOME), outcomes - set(BY_LUA_OUTCOME)


@pytest.mark.parametrize("script", MONEY_SCRIPTS)
def test_recorded_under_the_key_exactly_where_the_script_says_so(script: str) -> None:
    header = (LUA / f"{script}.lua").read_text(encoding="utf-8").split("\n\n", 1)[0]
    for outcome in _script_outcomes(script):
        line = next(line for line in header.splitlines() if f'outcome "{outcome}"' in line)
        assert BY_LUA_OUTCOME[outcome].recorded == ("(recorded under the key)" in line), outcome


def test_one_status_and_message_per_entry() -> None:
    assert len({id(r) for r in CATALOG}) == len(CATALOG)
    for refusal in CATALOG:
        assert 400 <= refusal.status <= 599, refusal
        assert refusal.message[:1].islower(), refusal
        assert re.fullmatch(r"[a-z_]+", refusal.code), refusal
    # Entries that share a code (two kinds of lost Redis data, two kinds of 401) share
    # its status: a client sees one code, one status.
    by_code: dict[str, set[int]] = {}
    for refusal in CATALOG:
        by_code.setdefault(refusal.code, set()).add(refusal.status)
    assert all(len(statuses) == 1 for statuses in by_code.values()), by_code


def test_only_what_a_script_can_replay_is_recorded() -> None:
    recorded = {r for r in CATALOG if r.recorded}
    assert recorded <= set(BY_LUA_OUTCOME.values())
    assert {r.code for r in recorded} == {
        "recipient_not_found",
        "insufficient_funds",
        "balance_limit_exceeded",
        "hold_not_found",
        "hold_not_pending",
        "too_many_holds",
        "transaction_not_found",
        "refund_exceeds_transfer",
    }


def _spec_codes(operation_id: str) -> dict[str, set[str]]:
    """Per status, the codes the OpenAPI document lists for one operation."""
    spec = build_spec()
    for path in spec["paths"].values():
        for operation in path.values():
            if operation["operationId"] == operation_id:
                return {
                    status: {
                        line.removeprefix("- `").split("`", 1)[0]
                        for line in response["description"].splitlines()
                    }
                    for status, response in operation["responses"].items()
                    if int(status) >= 400
                }
    raise AssertionError(operation_id)


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.operation_id)
def test_the_spec_lists_each_operations_codes_from_the_catalog(op: object) -> None:
    from service.http.routes import Operation

    assert isinstance(op, Operation)
    expected: dict[str, set[str]] = {}
    for refusal in refusals_of(op):
        expected.setdefault(str(refusal.status), set()).add(refusal.code)
    assert _spec_codes(op.operation_id) == expected


def test_a_transfer_documents_its_money_refusals() -> None:
    codes = _spec_codes("transfer")
    assert codes["404"] == {"recipient_not_found"}
    assert codes["409"] == {"insufficient_funds"}
    assert {"self_transfer", "balance_limit_exceeded", "idempotency_key_reused"} <= codes["422"]
    assert {"wallet_unavailable", "service_unavailable", "outcome_unknown"} <= codes["503"]


def test_a_refused_carries_its_entry_and_overrides() -> None:
    refused = refusals.Refused(refusals.VALIDATION_ERROR, "unknown field", "amount")
    assert (refused.code, refused.message, refused.field) == (
        "validation_error",
        "unknown field",
        "amount",
    )
    default = refusals.Refused(refusals.INSUFFICIENT_FUNDS, replayed=True)
    assert default.message == refusals.INSUFFICIENT_FUNDS.message
    assert default.replayed
    assert isinstance(default.refusal, Refusal)


def test_every_429_says_when_to_come_back() -> None:
    too_many = [refusal for refusal in CATALOG if refusal.status == 429]
    assert too_many
    for refusal in too_many:
        with pytest.raises(ValueError, match="retry_after_s"):
            refusals.Refused(refusal)
        assert refusals.Refused(refusal, retry_after_s=3).retry_after_s == 3
