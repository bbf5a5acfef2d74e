"""JSON log lines carry the id of the request they belong to."""

import io
import json
import logging
import multiprocessing

import pytest

from service.http.logs import _REQUEST_IDS, JsonFormatter, request_id
from service.redis.money import MoneyScripts
from tests.support.http_helpers import Client, new_user


async def test_every_response_carries_a_request_id(client: Client) -> None:
    generated = await client.get("/healthz")
    assert len(generated.headers["X-Request-Id"]) == 32
    again = await client.get("/healthz")
    assert again.headers["X-Request-Id"] != generated.headers["X-Request-Id"]
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


def _child_request_id(ids: "multiprocessing.Queue[str]") -> None:
    ids.put(_REQUEST_IDS.new())


def test_a_forked_worker_draws_request_ids_of_its_own() -> None:
    # gunicorn forks its workers from a master that imported this module.
    ids: multiprocessing.Queue[str] = multiprocessing.get_context("fork").Queue()
    children = [
        multiprocessing.get_context("fork").Process(target=_child_request_id, args=(ids,))
        for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=30)
    mine = _REQUEST_IDS.new()
    theirs = [ids.get(timeout=5), ids.get(timeout=5)]
    assert len({mine[:16], theirs[0][:16], theirs[1][:16]}) == 3, (mine, theirs)
