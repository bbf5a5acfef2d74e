"""The OpenAPI document GET /api/openapi.json serves: valid for the tools that read
OpenAPI 3.1, with what a client needs to reach the API, and request bodies that client
generators can build (the schemas say what the server refuses without unions of fields)."""

from importlib.metadata import version
from typing import Any

import pytest
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from service.http.openapi import build_spec
from tests.support.http_helpers import Client


@pytest.fixture
async def spec(client: Client) -> dict[str, Any]:
    response = await client.get("/api/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    served: dict[str, Any] = await response.json()
    return served


async def test_the_served_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # openapi-spec-validator: raises on the first fault
    assert spec == build_spec()


async def test_it_names_its_server_version_and_license(spec: dict[str, Any]) -> None:
    assert spec["servers"] == [{"url": "/", "description": "the server that serves this document"}]
    assert spec["info"]["version"] == version("wallet-service")
    assert spec["info"]["license"] == {"name": "MIT", "identifier": "MIT"}


def _request_body_schemas(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    names = {
        operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
        for path in spec["paths"].values()
        for operation in path.values()
        if "requestBody" in operation
    }
    return {name: spec["components"]["schemas"][name] for name in names}


def _keys_anywhere(schema: object) -> set[str]:
    if isinstance(schema, dict):
        return set(schema) | {key for value in schema.values() for key in _keys_anywhere(value)}
    if isinstance(schema, list):
        return {key for value in schema for key in _keys_anywhere(value)}
    return set()


async def test_request_bodies_have_no_unions_and_no_null(spec: dict[str, Any]) -> None:
    """A oneOf or anyOf in a body makes generators build one type per branch (a transfer
    without its amount); a body field that may be null would be typed so, though the server
    refuses null everywhere in a body."""
    bodies = _request_body_schemas(spec)
    assert {"TransferRequest", "HoldRequest", "BatchRequest", "RefundRequest"} <= set(bodies)
    for name, schema in bodies.items():
        assert not {"oneOf", "anyOf"} & _keys_anywhere(schema), name
        assert "null" not in repr(schema), name
    for name in ("TransferRequest", "HoldRequest"):
        properties = bodies[name]["properties"]
        assert properties["to_user_id"]["type"] == "integer"
        assert properties["to_username"]["type"] == "string"
        assert bodies[name]["required"] == ["amount"]


def _validator(spec: dict[str, Any], name: str) -> OAS31Validator:
    """A schema of the document, as OpenAPI 3.1 validates it (its $refs inside the document)."""
    return OAS31Validator(
        {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
    )


@pytest.mark.parametrize(
    ("body", "valid"),
    [
        ({"to_user_id": 2, "amount": 5}, True),
        ({"to_username": "bob", "amount": 5}, True),
        ({"to_user_id": 2, "to_username": "bob", "amount": 5}, False),
        ({"amount": 5}, False),
        ({"to_user_id": 2}, False),
        ({"to_user_id": None, "amount": 5}, False),
    ],
)
async def test_the_schema_of_a_transfer_says_exactly_one_recipient(
    spec: dict[str, Any], body: dict[str, Any], valid: bool
) -> None:
    assert _validator(spec, "TransferRequest").is_valid(body) is valid
    batch = {"transfers": [{"to_user_id": 3, "amount": 1}, body]}
    assert _validator(spec, "BatchRequest").is_valid(batch) is valid


async def test_the_error_schema_lists_every_problem(spec: dict[str, Any]) -> None:
    validator = _validator(spec, "ErrorOut")
    two_problems = {
        "error": {
            "code": "validation_error",
            "message": "amount must be an integer from 1 to 1000000000000; give to_user_id or"
            " to_username",
            "field": "amount",
            "errors": [
                {"field": "amount", "message": "amount must be an integer from 1 to 1000000000000"},
                {"message": "give to_user_id or to_username"},
            ],
        }
    }
    assert validator.is_valid(two_problems)
    assert not validator.is_valid({"error": {"code": "x", "message": "y", "errors": [{}]}})
