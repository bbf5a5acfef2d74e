"""Schemathesis against the real app (real Redis and PostgreSQL), driven by /api/openapi.json.

The app serves on a real port in this event loop; the schemathesis CLI runs in a subprocess
(its HTTP client is blocking) with every check it has: no 5xx, documented status codes,
content types and response schemas, valid input accepted, invalid input refused, routes
refusing unauthenticated calls, undocumented methods answered 405. It runs twice: once
without a session, once as a logged-in user with money, which schemathesis logs in as
itself (and again after it logs itself out). All phases run, stateful included, which
follows the spec's OpenAPI links (sign-up -> login, sign-up -> transfer, deposit and
transfer -> history).
"""

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from pytest_aiohttp import AiohttpServer
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.amounts import MAX_AMOUNT_KOPECKS
from service.domain.cursor import decode_time_cursor, encode_time_cursor
from service.http.app import create_app
from service.http.docs import CURSOR_PATTERN
from service.redis.types import RedisClient
from service.settings import Settings

SEED = 20261126
MAX_EXAMPLES = 100
RUN_TIMEOUT_S = 240
PASSWORD = "correct horse battery"
SENDER = "st-sender"
RECIPIENT = "st-recipient"


@pytest.fixture
async def server(
    aiohttp_server: AiohttpServer,
    app_settings: Settings,
    redis_client: RedisClient,
    db_engine: AsyncEngine,
) -> TestServer:
    # Schemathesis fails hundreds of logins from 127.0.0.1, and as the sender hundreds of
    # password changes with a made-up current password (each a failed login of the
    # sender); the locks would then refuse its own logins.
    settings = app_settings.model_copy(
        update={
            "login_max_failures_per_address": 100_000,
            "login_max_failures_per_username_and_address": 100_000,
            "login_failures_before_delay": 100_000,
        }
    )
    return await aiohttp_server(create_app(settings), host="127.0.0.1")


async def _new_user(base: str, username: str, deposits: int) -> int:
    # The default jar keeps no cookies from an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(base, cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        body = {"username": username, "password": PASSWORD}
        async with http.post("/api/sign-up/", json=body) as response:
            assert response.status == 201, await response.text()
            user_id = int((await response.json())["id"])
        async with http.post("/api/login/", json=body) as response:
            assert response.status == 200, await response.text()
        for _ in range(deposits):
            deposit = {"amount": MAX_AMOUNT_KOPECKS}
            async with http.post("/api/balance/deposit/", json=deposit) as response:
                assert response.status == 201, await response.text()
    return user_id


def _common_config(top_level: str = "") -> str:
    return f"""
{top_level}
seed = {SEED}
workers = 1
cache.enabled = false
reports.har.enabled = true

[generation]
max-examples = {MAX_EXAMPLES}
database = "none"

[checks]
enabled = true

# A link fills in a field of a generated body (sign-up's id as to_user_id next to a generated
# to_username), and schemathesis still counts the result as valid.
[phases.stateful.checks]
positive_data_acceptance.enabled = false
"""


# Schemathesis draws Idempotency-Keys from a few values ("0", "000..."), so most requests
# would meet a key already used with another body (422 idempotency_key_reused) and never
# move money. A valid key is made unique per request content; a repeat stays a repeat.
# Three kinds of valid-by-the-schema requests are refused by rules the schema does not state,
# so they are not generated: a statement's period past its limit, a payment to the sender
# (422 self_transfer: a transfer, a hold, a batch's leg), 1.0 for
# an integer (JSON Schema counts it as one; the contract refuses floats), and a sign-up whose
# password the password rules refuse (a control character, or a commonly used password: a
# list the schema only names in words).
_HOOKS = """
import hashlib
import re
from datetime import datetime, timedelta

import schemathesis

from service.auth.password_rules import check_new_password
from service.domain.limits import MAX_STATEMENT_DAYS
from service.domain.refusals import Refused

VALID_KEY = re.compile(r"[!-~](?:[ -~]*[!-~])?")
SENDER_ID = {sender_id}
SENDER_NAME = "{sender_name}"


def _refused_password(password):
    try:
        check_new_password(password)
    except Refused:
        return True
    return False


def _integral_float(value):
    if isinstance(value, float):
        return value.is_integer()
    if isinstance(value, dict):
        return any(_integral_float(item) for item in value.values())
    if isinstance(value, list):
        return any(_integral_float(item) for item in value)
    return False


def _pays_the_sender(body):
    return body.get("to_user_id") == SENDER_ID or body.get("to_username") == SENDER_NAME


# A statement's period the schema cannot state a limit for: to before from, or longer than
# MAX_STATEMENT_DAYS.
def _period_refused(query):
    try:
        start = datetime.fromisoformat(query["from"])
        end = datetime.fromisoformat(query["to"])
        return not timedelta(0) <= end - start <= timedelta(days=MAX_STATEMENT_DAYS)
    except (KeyError, TypeError, ValueError):
        return False


@schemathesis.hook
def filter_case(context, case):
    if case.path == "/api/balance/statement/" and _period_refused(case.query or {{}}):
        return False
    if not isinstance(case.body, dict):
        return True
    if _integral_float(case.body):
        return False
    password = case.body.get("password")
    if case.path == "/api/sign-up/" and isinstance(password, str) and _refused_password(password):
        return False
    if case.path in ("/api/balance/transfer/", "/api/holds/") and _pays_the_sender(case.body):
        return False
    legs = case.body.get("transfers")
    return not (
        case.path == "/api/balance/transfer/batch/"
        and isinstance(legs, list)
        and any(isinstance(leg, dict) and _pays_the_sender(leg) for leg in legs)
    )


@schemathesis.hook
def map_case(context, case):
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if isinstance(key, str) and len(key) <= 64 and VALID_KEY.fullmatch(key):
        request = (case.method, case.path, case.path_parameters, case.body)
        digest = hashlib.sha256(repr(request).encode()).hexdigest()
        case.headers["Idempotency-Key"] = f"{{digest[:12]}}-{{key[-51:]}}"
    return case
"""


def _authenticated_config(hooks: Path) -> str:
    return (
        _common_config(f'hooks = "{hooks}"')
        + f"""
[auth.dynamic.openapi.session]
path = "/api/login/"
payload = {{ username = "{SENDER}", password = "{PASSWORD}" }}
extract_from = "cookie"
extract_selector = "wallet_session"
retry_on = [401]
"""
    )


async def _schemathesis(tmp_path: Path, name: str, config: str, spec_url: str) -> None:
    config_file = tmp_path / f"{name}.toml"
    config_file.write_text(config)
    # Only 127.0.0.1 is contacted: no proxy from the environment.
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config_file),
        "--no-color",
        "run",
        spec_url,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    report = out.decode(errors="replace")[-30_000:]
    assert process.returncode == 0, (
        f"schemathesis ({name}) found problems; every request and response is in"
        f" {tmp_path / 'schemathesis-report'}:\n{report}"
    )


async def test_the_api_conforms_to_its_openapi_spec(server: TestServer, tmp_path: Path) -> None:
    base = str(server.make_url("/")).rstrip("/")
    spec_url = f"{base}/api/openapi.json"
    # The first user: id 1 (the database starts empty), the smallest id, which schemathesis
    # always tries; so transfers reach an existing recipient.
    assert await _new_user(base, RECIPIENT, deposits=0) == 1
    sender_id = await _new_user(base, SENDER, deposits=2)
    hooks = tmp_path / "hooks.py"
    hooks.write_text(_HOOKS.format(sender_id=sender_id, sender_name=SENDER))
    await _schemathesis(tmp_path, "anonymous", _common_config(f'hooks = "{hooks}"'), spec_url)
    await _schemathesis(tmp_path, "authenticated", _authenticated_config(hooks), spec_url)


@settings(max_examples=500, deadline=None)
@given(cursor=st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_history_cursor_the_spec_allows_is_readable(cursor: str) -> None:
    decode_time_cursor(cursor)


@settings(max_examples=500, deadline=None)
@given(
    at_us=st.integers(min_value=0, max_value=10**16 - 1),
    txn_id=st.integers(min_value=0, max_value=10**15 - 1),
)
def test_the_spec_allows_every_history_cursor_the_server_gives(at_us: int, txn_id: int) -> None:
    cursor = encode_time_cursor(at_us, txn_id)
    assert re.fullmatch(CURSOR_PATTERN, cursor)
    assert decode_time_cursor(cursor) == (at_us, txn_id)
