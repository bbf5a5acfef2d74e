"""GET /api/openapi.json: OpenAPI 3.1, generated from the models that validate (schemas.py)."""

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service import schemas
from service.errors import json_response
from service.sessions import COOKIE_NAME
from service.wallet_routes import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

routes = web.RouteTableDef()

_ERROR_TEXT = {
    400: "malformed_json: the body is not JSON",
    401: "unauthorized (no valid session) or invalid_credentials",
    404: "recipient_not_found",
    409: "username_taken or insufficient_funds",
    413: "payload_too_large: body over 64 KiB",
    415: "unsupported_media_type: the body must be application/json",
    422: "validation_error (with field), self_transfer, balance_limit_exceeded or"
    " idempotency_key_reused",
    429: "too_many_attempts",
    503: "server_busy, service_unavailable, wallet_unavailable or history_unavailable: retry"
    " shortly",
}


@dataclass(frozen=True)
class Operation:
    operation_id: str
    method: str
    path: str
    summary: str
    status: int
    response: type[BaseModel] | None
    errors: tuple[int, ...]
    body: type[BaseModel] | None = None
    query: tuple[dict[str, Any], ...] = ()
    authenticated: bool = True
    idempotent: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # OpenAPI links of the success response: what a client can do next with its data.
    links: dict[str, Any] = field(default_factory=dict)


_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_PAGE_SIZE,
        "default": DEFAULT_PAGE_SIZE,
    },
}
# A cursor (service/cursor.py) is base64url("v1:" + 1 to 16 digits), unpadded: "djE6" for
# "v1:", then 4 characters per 3 digits and 2 or 3 for a last 1 or 2. A digit byte is
# 0x30-0x39, which leaves these characters at each place of a 4-character group.
_DIGITS_HEAD = "(?:[MN][DTjz]|O[DT])"  # the first digit's bits
_DIGITS3 = f"{_DIGITS_HEAD}[AEIMQUYcgk][w-z0-5]"
_DIGITS1 = "(?:[MN][AQgw]|O[AQ])"
_DIGITS2 = f"{_DIGITS_HEAD}[AEIMQUYcgk]"
_GROUPS = f"(?:{_DIGITS3})"
CURSOR_PATTERN = f"^djE6(?:{_GROUPS}{{1,5}}|{_GROUPS}{{0,5}}{_DIGITS1}|{_GROUPS}{{0,4}}{_DIGITS2})$"
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": CURSOR_PATTERN},
    "description": "next_cursor of the previous page, as given; anything else is 422",
}
_DIRECTION = {
    "name": "direction",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["all", "in", "out"], "default": "all"},
}
_JSON_POST = (400, 413, 415, 422)

_SIGN_UP_LINKS = {
    "LogIn": {
        "operationId": "logIn",
        "requestBody": {
            "username": "$request.body#/username",
            "password": "$request.body#/password",
        },
        "description": "The new user logs in with the credentials it signed up with",
    },
    "TransferToNewUser": {
        "operationId": "transfer",
        "requestBody": {"to_user_id": "$response.body#/id"},
        "description": "The new user can receive transfers by its id",
    },
}
_DEPOSIT_LINKS = {
    "ListDeposits": {
        "operationId": "listDeposits",
        "description": "The deposit is on the first page of the depositor's history at once",
    },
}
_TRANSFER_LINKS = {
    "ListTransfersOut": {
        "operationId": "listTransfers",
        "parameters": {"query.direction": "out"},
        "description": "The transfer is on the first page of the sender's outgoing history at once",
    },
}

OPERATIONS = (
    Operation("signUp", "post", "/api/sign-up/", "Create a user with a zero balance", 201,
              schemas.UserOut, (*_JSON_POST, 409, 503), body=schemas.Credentials,
              authenticated=False, links=_SIGN_UP_LINKS),
    Operation("logIn", "post", "/api/login/", "Log in; sets the session cookie", 200,
              schemas.UserOut, (*_JSON_POST, 401, 429, 503), body=schemas.Credentials,
              authenticated=False),
    Operation("logOut", "post", "/api/logout/", "Revoke the session", 204, None, (401, 503)),
    Operation("getBalance", "get", "/api/balance/", "The balance in kopecks and rubles", 200,
              schemas.BalanceOut, (401, 422, 503)),
    Operation("deposit", "post", "/api/balance/deposit/", "Deposit to one's own balance", 201,
              schemas.TransactionOut, (*_JSON_POST, 401, 503), body=schemas.DepositRequest,
              idempotent=True, links=_DEPOSIT_LINKS),
    Operation("listDeposits", "get", "/api/balance/deposit/", "Deposit history, newest first",
              200, schemas.DepositPage, (401, 422, 503), query=(_LIMIT, _CURSOR)),
    Operation("transfer", "post", "/api/balance/transfer/", "Transfer to another user", 201,
              schemas.TransactionOut, (*_JSON_POST, 401, 404, 409, 503),
              body=schemas.TransferRequest, idempotent=True, links=_TRANSFER_LINKS),
    Operation("listTransfers", "get", "/api/balance/transfer/", "Transfer history, newest first",
              200, schemas.TransferPage, (401, 422, 503), query=(_DIRECTION, _LIMIT, _CURSOR)),
)  # fmt: skip

_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    # HTTP drops spaces around a header value: a key neither starts nor ends with one.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": 64,
        "pattern": "^[!-~](?:[ -~]*[!-~])?$",
    },
    "description": "A repeat within 24 h returns the first response and moves no money;"
    " spaces around the key are not part of it",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def build_spec() -> dict[str, Any]:
    models: set[type[BaseModel]] = {schemas.ErrorOut}
    for op in OPERATIONS:
        models.update(m for m in (op.body, op.response) if m is not None)
    _, defs = models_json_schema(
        [(m, "validation" if m in {op.body for op in OPERATIONS} else "serialization")
         for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )  # fmt: skip
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        responses: dict[str, Any] = {
            str(op.status): {"description": "success"}
            | ({"content": _json_content(op.response)} if op.response else {})
            | ({"links": op.links} if op.links else {})
        }
        for status in sorted(op.errors):
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": _json_content(schemas.ErrorOut),
            }
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": responses,
        }
        parameters = [*op.query, *([_IDEMPOTENCY_HEADER] if op.idempotent else [])]
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": _json_content(op.body)}
        operation["security"] = [{"session": []}] if op.authenticated else []
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "Wallet service", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": COOKIE_NAME}},
        },
    }


_SPEC = build_spec()


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return json_response(_SPEC)
