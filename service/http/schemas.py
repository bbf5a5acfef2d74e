"""Request and response models. The same models validate input and generate the OpenAPI spec."""

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    field_validator,
    model_validator,
)

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
Password = Annotated[
    str, StringConstraints(min_length=MIN_PASSWORD_CHARS, max_length=MAX_PASSWORD_CHARS)
]
AmountKopecks = Annotated[int, Field(ge=1, le=MAX_AMOUNT_KOPECKS)]
UserId = Annotated[int, Field(ge=1, le=MAX_USER_ID)]

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


class StrictBody(BaseModel):
    """JSON integers only for integers, no coercion, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


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


class Recipient(StrictBody):
    """A body that names its recipient by user id or by username, exactly one of them."""

    # What exactly_one_recipient enforces, for the spec: one of the two is given, not
    # null, and the other is absent.
    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["to_user_id"], "properties": {"to_user_id": {"type": "integer"}}},
                {"required": ["to_username"], "properties": {"to_username": {"type": "string"}}},
            ],
            "not": {"required": ["to_user_id", "to_username"]},
        }
    )

    to_user_id: UserId | None = None
    to_username: Username | None = None

    @model_validator(mode="after")
    def exactly_one_recipient(self) -> "Recipient":
        # Naming both is refused even when one of them is null.
        named = {"to_user_id", "to_username"} & self.model_fields_set
        if len(named) != 1 or (self.to_user_id is None and self.to_username is None):
            raise ValueError("give exactly one of to_user_id and to_username")
        return self


class TransferRequest(Recipient):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")


class BatchRequest(StrictBody):
    transfers: list[TransferRequest] = Field(
        min_length=1,
        max_length=MAX_BATCH_LEGS,
        description=f"1 to {MAX_BATCH_LEGS} legs, applied all or none, in this order",
    )


def _not_null(value: object) -> object:
    if value is None:
        raise ValueError("leave the field out instead of null")
    return value


def _integer_only(schema: dict[str, Any]) -> None:
    """The spec of an amount that may be left out but is never null (_not_null): the
    integer branch of pydantic's ``anyOf: [integer, null]``."""
    branches = schema.pop("anyOf")
    schema.update(next(branch for branch in branches if branch.get("type") == "integer"))


# An amount that may be left out, but not given as null: the contract refuses null for an
# amount.
OptionalAmount = Annotated[AmountKopecks | None, Field(json_schema_extra=_integer_only)]


class RefundRequest(StrictBody):
    amount: OptionalAmount = Field(
        default=None, description="kopecks; absent: all that is not refunded yet"
    )

    _amount_not_null = field_validator("amount", mode="before")(_not_null)


class HoldRequest(Recipient):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")
    expires_in_s: int = Field(
        default=DEFAULT_HOLD_EXPIRES_IN_S,
        ge=MIN_HOLD_EXPIRES_IN_S,
        le=MAX_HOLD_EXPIRES_IN_S,
        description="seconds until the hold expires unless captured or voided",
    )


class CaptureRequest(StrictBody):
    amount: OptionalAmount = Field(
        default=None, description="kopecks, at most the hold's amount; absent: all of it"
    )

    _amount_not_null = field_validator("amount", mode="before")(_not_null)


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


class StatementOut(BaseModel):
    user_id: Id
    from_: Timestamp = Field(alias="from")
    to: Timestamp
    opening_balance_kopecks: Kopecks
    closing_balance_kopecks: Kopecks
    items: list[TransferItem] = Field(
        description="oldest first; direction is in for deposits and transfers received"
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


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail
