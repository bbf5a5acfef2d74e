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
    503: "wallet_unavailable or history_unavailable: try again shortly",
}


@dataclass(frozen=True)
class Operation:
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
_CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "next_cursor of the previous page",
}
_DIRECTION = {
    "name": "direction",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["all", "in", "out"], "default": "all"},
}
_JSON_POST = (400, 413, 415, 422)

OPERATIONS = (
    Operation("post", "/api/sign-up/", "Create a user with a zero balance", 201, schemas.UserOut,
              (*_JSON_POST, 409), body=schemas.Credentials, authenticated=False),
    Operation("post", "/api/login/", "Log in; sets the session cookie", 200, schemas.UserOut,
              (*_JSON_POST, 401, 429), body=schemas.Credentials, authenticated=False),
    Operation("post", "/api/logout/", "Revoke the session", 204, None, (401,)),
    Operation("get", "/api/balance/", "The balance in kopecks and rubles", 200,
              schemas.BalanceOut, (401, 422, 503)),
    Operation("post", "/api/balance/deposit/", "Deposit to one's own balance", 201,
              schemas.TransactionOut, (*_JSON_POST, 401, 503), body=schemas.DepositRequest,
              idempotent=True),
    Operation("get", "/api/balance/deposit/", "Deposit history, newest first", 200,
              schemas.DepositPage, (401, 422, 503), query=(_LIMIT, _CURSOR)),
    Operation("post", "/api/balance/transfer/", "Transfer to another user", 201,
              schemas.TransactionOut, (*_JSON_POST, 401, 404, 409, 503),
              body=schemas.TransferRequest, idempotent=True),
    Operation("get", "/api/balance/transfer/", "Transfer history, newest first", 200,
              schemas.TransferPage, (401, 422, 503), query=(_DIRECTION, _LIMIT, _CURSOR)),
)  # fmt: skip

_IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[ -~]+$"},
    "description": "A repeat within 24 h returns the first response and moves no money",
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
        }
        for status in sorted(op.errors):
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": _json_content(schemas.ErrorOut),
            }
        operation: dict[str, Any] = {"summary": op.summary, "responses": responses}
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
