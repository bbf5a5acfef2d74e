"""A Python client generated from the served OpenAPI document by openapi-python-client (its
CLI, in a temporary directory), driving the real app through every kind of operation: what
a user of the API gets from the document alone.

The generated package is imported from that directory; its functions and models are
reached by name, so they are typed Any here (mypy never sees the generated code).
"""

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.support.http_helpers import PASSWORD, Client

PACKAGE = "wallet_client"
GENERATE_TIMEOUT_S = 120


async def _generate(spec: dict[str, Any], directory: Path) -> None:
    (directory / "openapi.json").write_text(json.dumps(spec))
    (directory / "config.yaml").write_text(f"package_name_override: {PACKAGE}\n")
    generator = Path(sys.executable).parent / "openapi-python-client"
    # It formats what it writes with ruff, found on PATH (installed beside it).
    env = os.environ | {"PATH": f"{generator.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = await asyncio.create_subprocess_exec(
        str(generator),
        "generate",
        "--path",
        "openapi.json",
        "--config",
        "config.yaml",
        "--meta",
        "none",
        "--output-path",
        PACKAGE,
        "--fail-on-warning",
        cwd=directory,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), GENERATE_TIMEOUT_S)
    assert process.returncode == 0, out.decode(errors="replace")


@pytest.fixture
def import_path(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` on sys.path for the test, and the generated package forgotten after."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.split(".")[0] == PACKAGE]:
            del sys.modules[name]


class Generated:
    """The generated package: ``api.<operation>`` modules and ``models``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.package = importlib.import_module(PACKAGE)
        self.models: Any = importlib.import_module(f"{PACKAGE}.models")
        self.types: Any = importlib.import_module(f"{PACKAGE}.types")

    def api(self, operation: str) -> Any:
        module: ModuleType = importlib.import_module(f"{PACKAGE}.api.default.{operation}")
        return module

    def client(self) -> Any:
        """A client of its own: its httpx client keeps the session cookie of its login."""
        return self.package.Client(base_url=self.base_url, raise_on_unexpected_status=True)


@pytest.fixture
async def generated(client: Client, import_path: Path) -> Generated:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    await _generate(await response.json(), import_path)
    return Generated(str(client.make_url("")).rstrip("/"))


async def _call(
    generated: Generated, user: Any, operation: str, status: int, /, **kwargs: Any
) -> Any:
    """Calls one operation through the generated client; its parsed answer, after
    checking the status."""
    response = await generated.api(operation).asyncio_detailed(client=user, **kwargs)
    assert response.status_code == HTTPStatus(status), (operation, response.content)
    return response.parsed


async def _user(generated: Generated, user: Any, name: str) -> int:
    m = generated.models
    credentials = {"username": name, "password": PASSWORD}
    created = await _call(generated, user, "sign_up", 201, body=m.SignUpRequest(**credentials))
    logged_in = await _call(generated, user, "log_in", 200, body=m.Credentials(**credentials))
    assert (logged_in.id, logged_in.username) == (created.id, name)
    user_id: int = created.id
    return user_id


async def test_a_generated_client_drives_every_kind_of_operation(generated: Generated) -> None:
    m, unset = generated.models, generated.types.UNSET
    async with generated.client() as alice, generated.client() as bob:
        alice_id = await _user(generated, alice, "alice")
        bob_id = await _user(generated, bob, "bob")

        deposit = await _call(
            generated,
            alice,
            "deposit",
            201,
            body=m.DepositRequest(amount=100_000),
            idempotency_key="dep-1",
        )
        assert (deposit.kind.value, deposit.amount, deposit.amount_rub) == (
            "deposit",
            100_000,
            "1000.00",
        )
        by_id = await _call(
            generated,
            alice,
            "transfer",
            201,
            body=m.TransferRequest(to_user_id=bob_id, amount=2_000),
        )
        by_name = await _call(
            generated, alice, "transfer", 201, body=m.TransferRequest(to_username="bob", amount=500)
        )
        for sent, amount in ((by_id, 2_000), (by_name, 500)):
            assert (sent.kind.value, sent.from_user_id, sent.to_user_id, sent.amount) == (
                "transfer",
                alice_id,
                bob_id,
                amount,
            )

        # Histories, a page at a time through next_cursor.
        for extra in (1, 2):
            await _call(generated, alice, "deposit", 201, body=m.DepositRequest(amount=extra))
        first = await _call(generated, alice, "list_deposits", 200, limit=2)
        assert [item.amount for item in first.items] == [2, 1]
        rest = await _call(
            generated, alice, "list_deposits", 200, limit=2, cursor=first.next_cursor
        )
        assert [item.amount for item in rest.items] == [100_000]
        assert rest.next_cursor is None
        out = await _call(
            generated,
            alice,
            "list_transfers",
            200,
            direction=m.ListTransfersDirection.OUT,
            limit=1,
        )
        assert [(t.id, t.direction.value) for t in out.items] == [(by_name.id, "out")]
        older = await _call(
            generated,
            alice,
            "list_transfers",
            200,
            direction=m.ListTransfersDirection.OUT,
            limit=1,
            cursor=out.next_cursor,
        )
        assert [t.id for t in older.items] == [by_id.id]
        received = await _call(generated, bob, "list_transfers", 200)
        assert [(t.id, t.direction.value) for t in received.items] == [
            (by_name.id, "in"),
            (by_id.id, "in"),
        ]

        # Holds: alice reserves, bob captures one and voids another.
        hold = await _call(
            generated,
            alice,
            "create_hold",
            201,
            body=m.HoldRequest(to_username="bob", amount=3_000, expires_in_s=3_600),
        )
        assert (hold.status.value, hold.amount, hold.to_user_id) == ("pending", 3_000, bob_id)
        seen = await _call(generated, bob, "get_hold", 200, id=hold.id)
        assert (seen.id, seen.from_user_id) == (hold.id, alice_id)
        pending = await _call(
            generated,
            alice,
            "list_holds",
            200,
            status=m.ListHoldsStatus.PENDING,
            role=m.ListHoldsRole.PAYER,
        )
        assert [h.id for h in pending.items] == [hold.id]
        captured = await _call(
            generated,
            bob,
            "capture_hold",
            201,
            id=hold.id,
            body=m.CaptureRequest(amount=2_000),
            idempotency_key="cap-1",
        )
        assert (captured.hold_id, captured.amount, captured.to_user_id) == (hold.id, 2_000, bob_id)
        second = await _call(
            generated, alice, "create_hold", 201, body=m.HoldRequest(to_user_id=bob_id, amount=100)
        )
        voided = await _call(generated, bob, "void_hold", 200, id=second.id)
        assert voided.status.value == "voided"
        refused = await _call(generated, bob, "void_hold", 409, id=hold.id)
        assert refused.error.code == "hold_not_pending"

        # A batch, all or nothing, and a refund of part of a transfer, then of the rest.
        batch = await _call(
            generated,
            alice,
            "transfer_batch",
            201,
            body=m.BatchRequest(
                transfers=[
                    m.TransferRequest(to_user_id=bob_id, amount=100),
                    m.TransferRequest(to_username="bob", amount=250),
                ]
            ),
        )
        assert [leg.amount for leg in batch.items] == [100, 250]
        assert batch.items[1].id == batch.items[0].id + 1
        part = await _call(
            generated, bob, "refund_transfer", 201, id=by_id.id, body=m.RefundRequest(amount=300)
        )
        assert (part.kind.value, part.refund_of, part.amount) == ("refund", by_id.id, 300)
        rest_of_it = await _call(
            generated, bob, "refund_transfer", 201, id=by_id.id, body=m.RefundRequest()
        )
        assert rest_of_it.amount == 1_700

        # Balances now and at an instant, and a statement.
        balance = await _call(generated, alice, "get_balance", 200)
        spent = 2_000 + 500 + 2_000 + 100 + 250 - 2_000
        assert balance.balance_kopecks == 100_003 - spent
        assert (balance.held_kopecks, balance.currency) == (0, "RUB")
        assert balance.available_kopecks == balance.balance_kopecks
        before = await _call(
            generated, alice, "get_balance", 200, at=datetime(2000, 1, 1, tzinfo=UTC)
        )
        assert (before.balance_kopecks, before.balance) == (0, "0.00")
        now = datetime.now(UTC)
        statement = await _call(
            generated,
            alice,
            "get_statement",
            200,
            from_=now - timedelta(hours=1),
            to=now + timedelta(hours=1),
        )
        assert statement.opening_balance_kopecks == 0
        assert statement.closing_balance_kopecks == balance.balance_kopecks
        assert statement.to_dict()["from"] < statement.to_dict()["to"]

        # The generated models leave out what was not given: no null reaches the server.
        assert m.TransferRequest(to_user_id=bob_id, amount=1).to_dict() == {
            "to_user_id": bob_id,
            "amount": 1,
        }
        assert m.RefundRequest().amount is unset
        await _call(generated, alice, "log_out", 204)
        await _call(generated, alice, "get_balance", 401)


async def test_a_generated_client_reads_the_refusals(generated: Generated) -> None:
    """The generated client can send a transfer naming both recipients or neither; the
    server refuses it, and the error model parses with every problem listed."""
    m = generated.models
    async with generated.client() as alice:
        await _user(generated, alice, "alice")
        for body, problem in (
            (m.TransferRequest(amount=0), "give to_user_id or to_username"),
            (
                m.TransferRequest(to_user_id=2, to_username="bob", amount=0),
                "give either to_user_id or to_username, not both",
            ),
        ):
            refused = await _call(generated, alice, "transfer", 422, body=body)
            assert refused.error.code == "validation_error"
            assert refused.error.field == "amount"
            assert [(e.field, e.message) for e in refused.error.errors] == [
                ("amount", "amount must be an integer from 1 to 1000000000000"),
                (generated.types.UNSET, problem),
            ]
        missing = await _call(
            generated,
            alice,
            "transfer",
            404,
            body=m.TransferRequest(to_username="nobody", amount=1),
        )
        assert missing.error.code == "recipient_not_found"
