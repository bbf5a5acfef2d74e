"""The OpenAPI 3.1 document, built from the table of routes (service/http/routes.py), the
models that validate (service/http/schemas.py) and the catalog of refusals: each error
response lists the codes that operation may answer with that status."""

from functools import cache
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from service.domain.refusals import Refusal
from service.http import docs, schemas
from service.http.routes import OPERATIONS, Operation, refusals_of
from service.redis.keyspace import SESSION_COOKIE


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_content(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _error_responses(op: Operation) -> dict[str, Any]:
    by_status: dict[int, dict[str, Refusal]] = {}
    for refusal in refusals_of(op):
        by_status.setdefault(refusal.status, {}).setdefault(refusal.code, refusal)
    responses: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        response: dict[str, Any] = {
            "description": "\n".join(f"- `{r.code}`: {r.message}" for r in codes.values()),
            "content": _json_content(schemas.ErrorOut),
        }
        if op.idempotent and any(r.recorded for r in codes.values()):
            response["headers"] = docs.REPLAYED_RESPONSE_HEADERS
        responses[str(status)] = response
    return responses


@cache
def build_spec() -> dict[str, Any]:
    """Built once per process; read-only."""
    bodies = {op.body for op in OPERATIONS if op.body is not None}
    models: set[type[BaseModel]] = {schemas.ErrorOut, *bodies}
    models.update(op.response for op in OPERATIONS if op.response is not None)
    _, defs = models_json_schema(
        [(m, "validation" if m in bodies else "serialization")
         for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )  # fmt: skip
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        success: dict[str, Any] = {"description": "success"}
        if op.response is not None:
            success["content"] = _json_content(op.response)
        if op.csv:
            success.setdefault("content", {})["text/csv"] = {
                "schema": {"type": "string", "description": "a header row, then one row per item"}
            }
        if op.links:
            success["links"] = op.links
        if op.idempotent:
            success["headers"] = docs.REPLAYED_RESPONSE_HEADERS
        operation: dict[str, Any] = {
            "operationId": op.operation_id,
            "summary": op.summary,
            "responses": {str(op.status): success, **_error_responses(op)},
        }
        parameters = [*op.parameters, *([docs.IDEMPOTENCY_HEADER] if op.idempotent else [])]
        if parameters:
            operation["parameters"] = parameters
        if op.body is not None:
            operation["requestBody"] = {"required": True, "content": _json_content(op.body)}
        operation["security"] = [{"session": []}] if op.authenticated else []
        paths.setdefault(op.path, {})[op.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Wallet service",
            # One version everywhere: the package's (pyproject.toml, CHANGELOG.md).
            "version": version("wallet-service"),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        # Relative: the paths are on the origin that serves this document, whatever host,
        # port or proxy a client reached it through.
        "servers": [{"url": "/", "description": "the server that serves this document"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE}
            },
        },
    }
