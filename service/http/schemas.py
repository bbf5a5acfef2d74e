"""Request and response models. The same models validate input and generate the OpenAPI spec."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    RootModel,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import (
    DEFAULT_HOLD_EXPIRES_IN_S,
    MAX_BATCH_LEGS,
    MAX_HOLD_EXPIRES_IN_S,
    MAX_PASSWORD_CHARS,
    MAX_USER_ID,
    MIN_HOLD_EXPIRES_IN_S,
    MIN_PASSWORD_CHARS,
    USERNAME_PATTERN,
)

Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
USERNAME_RULE = "3 to 32 characters of A-Z a-z 0-9 _ . -"
Password = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
]
AmountKopecks = Annotated[int, Field(ge=1, le=MAX_AMOUNT_KOPECKS)]
UserId = Annotated[int, Field(ge=1, le=MAX_USER_ID)]

_PASSWORD_RULE = f"{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
# What each field of a request body must be, in words: a 422 says "<field> must be <rule>"
# (service/http/errors.py), whatever pydantic found wrong with it.
FIELD_RULES = {
    "username": USERNAME_RULE,
    "password": _PASSWORD_RULE,
    "current_password": _PASSWORD_RULE,
    "new_password": _PASSWORD_RULE,
    "amount": f"an integer from 1 to {MAX_AMOUNT_KOPECKS}",
    "to_user_id": f"an integer from 1 to {MAX_USER_ID}",
    "to_username": USERNAME_RULE,
    "expires_in_s": f"an integer from {MIN_HOLD_EXPIRES_IN_S} to {MAX_HOLD_EXPIRES_IN_S}",
    "transfers": f"a list of 1 to {MAX_BATCH_LEGS} transfers",
}

# Output only (they validate nothing at run time): what the responses are, for the spec.
Id = Annotated[int, Field(ge=1)]
Rubles = Annotated[str, Field(pattern=r"^(0|[1-9][0-9]*)\.[0-9]{2}$")]
Timestamp = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
        json_schema_extra={"format": "date-time"},
    ),
]


def _without_null(schema: dict[str, Any]) -> None:
    """The spec of a body: a field that may be left out is never null (StrictBody refuses
    null), so each property keeps only the non-null branch of pydantic's ``anyOf: [..., null]``
    and no ``default: null``. Generated clients then type it as "absent or a value"."""
    for prop in schema.get("properties", {}).values():
        branches = prop.pop("anyOf", None)
        if branches is not None:
            (kept,) = [branch for branch in branches if branch != {"type": "null"}]
            prop.update(kept)
        if "default" in prop and prop["default"] is None:
            del prop["default"]


class StrictBody(BaseModel):
    """JSON integers only for integers, no coercion, no unknown fields, and no null: a field
    that may be left out is left out."""

    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, json_schema_extra=_without_null
    )

    @field_validator("*", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("null")
        return value


class Credentials(StrictBody):
    username: Username = Field(description="3-32 of A-Z a-z 0-9 _ . -; unique regardless of case")
    password: Password


class PasswordChange(StrictBody):
    current_password: Password
    new_password: Password = Field(
        description="as at sign-up: no control characters, and not one of the most commonly"
        " used passwords (422 weak_password)"
    )


class SignUpRequest(Credentials):
    password: Password = Field(
        description="no control characters, and not one of the most commonly used passwords"
        " (422 weak_password)"
    )


class DepositRequest(StrictBody):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")


RECIPIENT_FIELDS = ("to_user_id", "to_username")


def _recipient_schema(schema: dict[str, Any]) -> None:
    """Exactly one of the two, as if/then/else: validators enforce it and client generators
    ignore it. A ``oneOf`` or ``anyOf`` of the two makes generators build a body type per
    branch, without the other fields (a transfer without its amount)."""
    _without_null(schema)
    schema["if"] = {"required": ["to_user_id"]}
    schema["then"] = {"not": {"required": ["to_username"]}}
    schema["else"] = {"required": ["to_username"]}
    schema["description"] = "Name the recipient by to_user_id or by to_username, not both."


class Recipient(StrictBody):
    """A body that names its recipient by user id or by username, exactly one of them."""

    model_config = ConfigDict(json_schema_extra=_recipient_schema)

    to_user_id: UserId | None = None
    to_username: Username | None = None

    @model_validator(mode="wrap")
    @classmethod
    def exactly_one_recipient(
        cls, data: Any, handler: ModelWrapValidatorHandler["Recipient"]
    ) -> "Recipient":
        """Both or neither is refused next to whatever else is wrong with the body (an
        "after" validator would only run once every field is valid)."""
        problem = _recipient_problem(data)
        try:
            body = handler(data)
        except ValidationError as exc:
            if problem is None:
                raise
            errors = [_reraised(error) for error in exc.errors()]
            errors.append({"type": problem, "loc": (), "input": data})
            raise ValidationError.from_exception_data(exc.title, errors) from None
        if problem is not None:
            raise problem
        return body


def _reraised(error: ErrorDetails) -> InitErrorDetails:
    again: InitErrorDetails = {"type": error["type"], "loc": error["loc"], "input": error["input"]}
    if "ctx" in error:
        again["ctx"] = error["ctx"]
    return again


# The error types of the recipient rule (service/http/errors.py words them).
BOTH_RECIPIENTS = "both_recipients"
NO_RECIPIENT = "no_recipient"


def _recipient_problem(data: Any) -> PydanticCustomError | None:
    if not isinstance(data, dict):
        return None  # not an object: the handler says so
    named = len(set(RECIPIENT_FIELDS) & data.keys())
    if named == 2:
        return PydanticCustomError(BOTH_RECIPIENTS, "both to_user_id and to_username")
    if named == 0:
        return PydanticCustomError(NO_RECIPIENT, "neither to_user_id nor to_username")
    return None


class TransferRequest(Recipient):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")


class BatchRequest(StrictBody):
    transfers: list[TransferRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_LEGS,
        description=f"1 to {MAX_BATCH_LEGS} legs, applied all or none, in this order",
    )


class RefundRequest(StrictBody):
    amount: AmountKopecks | None = Field(
        default=None, description="kopecks; absent: all that is not refunded yet"
    )


class HoldRequest(Recipient):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")
    expires_in_s: int = Field(
        default=DEFAULT_HOLD_EXPIRES_IN_S,
        ge=MIN_HOLD_EXPIRES_IN_S,
        le=MAX_HOLD_EXPIRES_IN_S,
        description="seconds until the hold expires unless captured or voided",
    )


class CaptureRequest(StrictBody):
    amount: AmountKopecks | None = Field(
        default=None, description="kopecks, at most the hold's amount; absent: all of it"
    )


class UserOut(BaseModel):
    id: Id
    username: Username


Kopecks = Annotated[int, Field(ge=0, le=MAX_BALANCE_KOPECKS)]


class BalanceOut(BaseModel):
    user_id: Id
    balance_kopecks: Kopecks = Field(description="posted: held money included")
    balance: Rubles = Field(description="rubles, two decimal places", examples=["101.00"])
    held_kopecks: Kopecks = Field(description="reserved by the user's pending holds")
    available_kopecks: Kopecks = Field(description="balance - held: what the user can spend")
    available: Rubles
    currency: Literal["RUB"]


class BalanceAtOut(BaseModel):
    user_id: Id
    at: Timestamp = Field(description="the instant asked for")
    balance_kopecks: Kopecks = Field(
        description="posted balance right after the last transaction at or before `at`"
    )
    balance: Rubles
    currency: Literal["RUB"]


class BalanceAnswer(RootModel[BalanceOut | BalanceAtOut]):
    """GET /api/balance/: the balance now, or with ``at`` the balance at that instant."""


class TransactionOut(BaseModel):
    id: Id
    kind: Literal["deposit", "transfer", "refund"]
    amount: AmountKopecks = Field(description="kopecks")
    amount_rub: Rubles = Field(examples=["20.00"])
    from_user_id: Id | None = Field(description="null for a deposit")
    to_user_id: Id
    created_at: Timestamp = Field(
        description="RFC 3339, UTC", examples=["2026-11-26T17:14:11.123456Z"]
    )
    hold_id: Id | None = Field(default=None, description="a capture: the hold it captured")
    refund_of: Id | None = Field(default=None, description="a refund: the transfer it refunds")


class HistoryItem(TransactionOut):
    balance_after_kopecks: Kopecks = Field(description="the viewer's balance right after it")
    balance_after: Rubles


class TransferItem(HistoryItem):
    direction: Literal["in", "out"]


class DepositPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None


class TransferPage(BaseModel):
    items: list[TransferItem]
    next_cursor: str | None


class BatchOut(BaseModel):
    items: list[TransactionOut] = Field(description="one transaction per leg, in the order given")


class StatementItem(TransferItem):
    kind: Literal["deposit", "transfer", "refund", "reversal"] = Field(  # type: ignore[assignment]
        description="reversal: a transfer across buckets undone before it reached its payee"
        " (its money back to the payer), listed after that transfer"
    )
    reversal_of: Id | None = Field(
        default=None, description="a reversal: the transfer it undid (also its id)"
    )


class StatementOut(BaseModel):
    user_id: Id
    from_: Timestamp = Field(alias="from")
    to: Timestamp
    opening_balance_kopecks: Kopecks
    closing_balance_kopecks: Kopecks
    items: list[StatementItem] = Field(
        description="oldest first, each at the instant the viewer's balance moved; direction"
        " is in for deposits, transfers received and reversals"
    )


class HoldOut(BaseModel):
    id: Id
    status: Literal["pending", "captured", "voided", "expired"]
    amount: AmountKopecks
    amount_rub: Rubles
    captured_amount: int = Field(ge=0, description="0 unless captured")
    from_user_id: Id = Field(description="the payer")
    to_user_id: Id = Field(description="the payee: only they capture or void")
    created_at: Timestamp
    expires_at: Timestamp
    capture_transaction_id: Id | None


class HoldPage(BaseModel):
    items: list[HoldOut]
    next_cursor: str | None


class FieldError(BaseModel):
    field: str | None = Field(
        default=None,
        description="the input at fault: a body field (transfers[i].amount for a batch's leg),"
        " a query parameter or a header; absent when it is the body as a whole",
    )
    message: str = Field(description="what it must be, in words")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = Field(
        default=None, description="where one input is at fault: the first one of `errors`"
    )
    errors: list[FieldError] | None = Field(
        default=None,
        description="validation_error only: every problem found, in the body's order",
    )


class ErrorOut(BaseModel):
    error: ErrorDetail
