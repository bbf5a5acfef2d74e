"""JSON log lines carry the id of the request they belong to."""

import io
import json
import logging

import pytest

from service.http.logs import JsonFormatter, request_id
from service.redis.money import MoneyScripts
from tests.support.http_helpers import Client, new_user


async def test_every_response_carries_a_request_id(client: Client) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["X-Request-Id"]) == 32
    echoed = await client.get("/healthz", headers={"X-Request-Id": "trace-42.a:b"})
    assert echoed.headers["X-Request-Id"] == "trace-42.a:b"
    for unsafe in ("x" * 65, "two words", "new\\nline", ""):
        replaced = await client.get("/healthz", headers={"X-Request-Id": unsafe})
        assert replaced.headers["X-Request-Id"] != unsafe
        assert len(replaced.headers["X-Request-Id"]) == 32


def test_a_log_line_is_one_json_object() -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("wallet.test", logging.WARNING, __file__, 1, "ran %s", ("x",), None)
    outside = json.loads(formatter.format(record))
    assert outside["level"] == "WARNING"
    assert outside["message"] == "ran x"
    assert "request_id" not in outside
    token = request_id.set("abc")
    try:
        assert json.loads(formatter.format(record))["request_id"] == "abc"
    finally:
        request_id.reset(token)


@pytest.mark.in_process_only
async def test_the_error_log_of_a_failing_request_names_its_request_id(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = await new_user(client, "alice")

    async def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(MoneyScripts, "deposit", broken)
    lines = io.StringIO()
    handler = logging.StreamHandler(lines)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("wallet.http")
    logger.addHandler(handler)
    try:
        response = await client.post(
            "/api/balance/deposit/",
            json={"amount": 5},
            cookies=alice.cookies,
            headers={"X-Request-Id": "req-7"},
        )
    finally:
        logger.removeHandler(handler)
    assert response.status == 500
    entry = json.loads(lines.getvalue().splitlines()[0])
    assert entry["request_id"] == "req-7"
    assert "RuntimeError: boom" in entry["exception"]
