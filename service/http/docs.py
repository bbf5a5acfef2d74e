"""What the OpenAPI document says of parameters, headers and links, beside the table of
routes (service/http/routes.py) that uses them."""

from service.domain.holds import STATUSES
from service.domain.limits import (
    DEFAULT_PAGE_SIZE,
    IDEMPOTENCY_KEY_MAX_CHARS,
    MAX_PAGE_SIZE,
    MAX_STATEMENT_DAYS,
    MAX_USER_ID,
)
from service.http.errors import REPLAYED_HEADER

LIMIT = {
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
# A cursor (service/domain/cursor.py) is base64url("v2:" + 31 digits), unpadded: "djI6" for
# "v2:", then ten groups of 4 characters per 3 digits, and 2 for the last digit. A digit byte
# is 0x30-0x39, which leaves these characters at each place of a 4-character group.
_DIGITS_HEAD = "(?:[MN][DTjz]|O[DT])"  # the first digit's bits
_DIGITS3 = f"{_DIGITS_HEAD}[AEIMQUYcgk][w-z0-5]"
_DIGITS1 = "(?:[MN][AQgw]|O[AQ])"
CURSOR_PATTERN = f"^djI6(?:{_DIGITS3}){{10}}{_DIGITS1}$"
CURSOR = {
    "name": "cursor",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": CURSOR_PATTERN},
    "description": "next_cursor of the previous page, as given; anything else is 422",
}
DIRECTION = {
    "name": "direction",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["all", "in", "out"], "default": "all"},
}
_INSTANT = {"type": "string", "format": "date-time"}
AT = {
    "name": "at",
    "in": "query",
    "required": False,
    "schema": _INSTANT,
    "description": "an RFC 3339 instant (send + as %2B): the posted balance right after the"
    " user's last transaction at or before it, 0 before the first",
}
FROM = {
    "name": "from",
    "in": "query",
    "required": True,
    "schema": _INSTANT,
    "description": "the first instant of the period (included)",
}
TO = {
    "name": "to",
    "in": "query",
    "required": True,
    "schema": _INSTANT,
    "description": f"the end of the period (excluded); at most {MAX_STATEMENT_DAYS} days"
    " after from",
}
FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["json", "csv"], "default": "json"},
}
HOLD_STATUS = {
    "name": "status",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(STATUSES)},
    "description": "a pending hold past its expires_at is expired",
}
HOLD_ROLE = {
    "name": "role",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["payer", "payee"]},
    "description": "absent: holds where the user is either",
}
_ID = {"type": "integer", "minimum": 1, "maximum": MAX_USER_ID}
HOLD_ID = {"name": "id", "in": "path", "required": True, "schema": _ID}
TRANSACTION_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": _ID,
    "description": "a transfer the user received",
}
HOLD_LINKS = {
    "CaptureHold": {
        "operationId": "captureHold",
        "parameters": {"path.id": "$response.body#/id"},
        "description": "The payee captures the hold",
    },
    "VoidHold": {
        "operationId": "voidHold",
        "parameters": {"path.id": "$response.body#/id"},
        "description": "The payee voids the hold",
    },
}
SIGN_UP_LINKS = {
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
DEPOSIT_LINKS = {
    "ListDeposits": {
        "operationId": "listDeposits",
        "description": "The deposit is on the first page of the depositor's history at once",
    },
}
TRANSFER_LINKS = {
    "ListTransfersOut": {
        "operationId": "listTransfers",
        "parameters": {"query.direction": "out"},
        "description": "The transfer is on the first page of the sender's outgoing history at once",
    },
}

IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    # HTTP drops spaces around a header value: a key neither starts nor ends with one.
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": IDEMPOTENCY_KEY_MAX_CHARS,
        "pattern": "^[!-~](?:[ -~]*[!-~])?$",
    },
    "description": "A repeat within 24 h returns the first response and moves no money;"
    " spaces around the key are not part of it",
}
# On the responses an Idempotency-Key can replay: the success, and the refusals recorded
# under the key.
REPLAYED_RESPONSE_HEADERS = {
    REPLAYED_HEADER: {
        "required": False,
        "schema": {"type": "string", "enum": ["true"]},
        "description": "present when this is the recorded answer to an earlier request"
        " with the same Idempotency-Key; no money moved this time",
    }
}
