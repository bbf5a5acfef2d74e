"""422 validation_error in the contract's form: the first field at fault in ``field``, every
problem in ``errors`` (each with its field and a message a person reads), and the messages
all in ``message``; never pydantic's wording or a regular expression."""

import re
from typing import Any

import pytest

from service.domain.amounts import MAX_AMOUNT_KOPECKS
from service.http.schemas import FIELD_RULES, StrictBody
from tests.support.http_helpers import Client, LoggedIn, new_user

AMOUNT_RULE = f"must be an integer from 1 to {MAX_AMOUNT_KOPECKS}"
USERNAME_RULE = "must be 3 to 32 characters of A-Z a-z 0-9 _ . -"
# What pydantic or a pattern would leak into a message.
JARGON = re.compile(
    r"Value error|Input should|valid dictionary|String should|pattern|\^|\$|\[A-Z|"
    r"\\|Extra inputs|Field required|model_type|literal_error|greater_than|instance of"
)


def problems_of(body: Any) -> list[tuple[str | None, str]]:
    """The error's problems as (field, message), after checking its shape."""
    error = body["error"]
    assert error["code"] == "validation_error", body
    problems = [(problem.get("field"), problem["message"]) for problem in error["errors"]]
    for problem in error["errors"]:
        assert set(problem) <= {"field", "message"}, body
    # The first field stays in ``field`` (clients from before the list read it there), and
    # the message says every problem.
    assert error.get("field") == problems[0][0], body
    assert error["message"] == "; ".join(message for _, message in problems), body
    for _, message in problems:
        assert not JARGON.search(message), message
    return problems


@pytest.fixture
async def alice(client: Client) -> LoggedIn:
    return await new_user(client, "alice", deposit_kopecks=1_000)


@pytest.mark.parametrize(
    ("path", "body", "problems"),
    [
        (
            "/api/balance/transfer/",
            {"to_user_id": 2, "to_username": "b!", "amount": 0},
            [
                ("to_username", f"to_username {USERNAME_RULE}"),
                ("amount", f"amount {AMOUNT_RULE}"),
                (None, "give either to_user_id or to_username, not both"),
            ],
        ),
        (
            "/api/balance/transfer/",
            {"amount": "5", "note": "rent"},
            [
                ("amount", f"amount {AMOUNT_RULE}"),
                ("note", "note is not a field of this request"),
                (None, "give to_user_id or to_username"),
            ],
        ),
        (
            "/api/balance/transfer/",
            {"to_user_id": None, "amount": 1.5},
            [
                ("to_user_id", "to_user_id must be an integer from 1 to 999999999999999"),
                ("amount", f"amount {AMOUNT_RULE}"),
            ],
        ),
        (
            "/api/balance/deposit/",
            {},
            [("amount", f"amount is required: an integer from 1 to {MAX_AMOUNT_KOPECKS}")],
        ),
        (
            "/api/holds/",
            {"to_username": "bob", "amount": True, "expires_in_s": 10},
            [
                ("amount", f"amount {AMOUNT_RULE}"),
                ("expires_in_s", "expires_in_s must be an integer from 60 to 604800"),
            ],
        ),
        (
            "/api/balance/transfer/batch/",
            {
                "transfers": [
                    {"to_user_id": 2, "amount": 5},
                    {"to_user_id": 2, "amount": -1},
                    {"amount": 5},
                    "pay bob",
                    {"to_user_id": 2, "to_username": "bob", "amount": 5},
                ]
            },
            [
                ("transfers[1].amount", f"transfers[1].amount {AMOUNT_RULE}"),
                ("transfers[2]", "transfers[2]: give to_user_id or to_username"),
                ("transfers[3]", "transfers[3] must be a JSON object"),
                ("transfers[4]", "transfers[4]: give either to_user_id or to_username, not both"),
            ],
        ),
        (
            "/api/balance/transfer/batch/",
            {"transfers": []},
            [("transfers", "transfers must be a list of 1 to 100 transfers")],
        ),
        (
            "/api/balance/transfer/1/refund/",
            {"amount": None},
            [("amount", f"amount {AMOUNT_RULE}")],
        ),
        (
            "/api/password/",
            {"current_password": "short", "new_password": "x" * 129},
            [
                ("current_password", "current_password must be 8 to 128 characters"),
                ("new_password", "new_password must be 8 to 128 characters"),
            ],
        ),
        (
            "/api/balance/deposit/",
            [1],
            [(None, "the body must be a JSON object")],
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
async def test_every_problem_is_listed_in_words(
    client: Client,
    alice: LoggedIn,
    path: str,
    body: Any,
    problems: list[tuple[str | None, str]],
) -> None:
    status, answer = await alice.post(client, path, body)
    assert status == 422, answer
    assert problems_of(answer) == problems


async def test_sign_up_lists_both_fields(client: Client) -> None:
    response = await client.post(
        "/api/sign-up/", json={"username": "ab", "password": "1234567", "email": "x"}
    )
    assert response.status == 422
    assert problems_of(await response.json()) == [
        ("username", f"username {USERNAME_RULE}"),
        ("password", "password must be 8 to 128 characters"),
        ("email", "email is not a field of this request"),
    ]


@pytest.mark.parametrize(
    ("path", "query", "headers", "problem"),
    [
        ("/api/balance/deposit/", {"limit": "0"}, {},
         ("limit", "limit must be an integer from 1 to 100")),
        ("/api/balance/transfer/", {"direction": "up"}, {},
         ("direction", "direction must be one of all, in, out")),
        ("/api/balance/deposit/", {"cursor": "x"}, {},
         ("cursor", "cursor must be the next_cursor of a previous page, as given")),
        ("/api/balance/", {"user_id": "1"}, {},
         ("user_id", "user_id is not a parameter of this request")),
        ("/api/holds/1/void/", {}, {"Idempotency-Key": "k" * 65},
         ("Idempotency-Key", "Idempotency-Key must be 1 to 64 printable ASCII characters")),
    ],
)  # fmt: skip
async def test_a_refused_query_or_header_is_one_problem_in_the_same_form(
    client: Client,
    alice: LoggedIn,
    path: str,
    query: dict[str, str],
    headers: dict[str, str],
    problem: tuple[str, str],
) -> None:
    method = client.post if path.endswith("/void/") else client.get
    response = await method(path, params=query, headers=headers, cookies=alice.cookies)
    assert response.status == 422
    assert problems_of(await response.json()) == [problem]


async def test_a_key_given_twice_is_named(client: Client, alice: LoggedIn) -> None:
    response = await client.post(
        "/api/balance/deposit/",
        data=b'{"amount": 1, "amount": 100}',
        headers={"Content-Type": "application/json"},
        cookies=alice.cookies,
    )
    assert response.status == 422
    assert problems_of(await response.json()) == [("amount", "amount is given twice")]


def _body_models() -> list[type[StrictBody]]:
    found: list[type[StrictBody]] = []
    pending: list[type[StrictBody]] = [StrictBody]
    while pending:
        model = pending.pop()
        found.append(model)
        pending.extend(model.__subclasses__())
    return found


def test_every_field_of_every_body_has_its_rule_in_words() -> None:
    fields = {name for model in _body_models() for name in model.model_fields}
    assert {"amount", "to_user_id", "transfers", "new_password"} <= fields
    assert fields == set(FIELD_RULES)
    for rule in FIELD_RULES.values():
        assert not JARGON.search(rule), rule
