"""Request and response models. The same models validate input and generate the OpenAPI spec."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.domain.amounts import MAX_AMOUNT_KOPECKS, MAX_BALANCE_KOPECKS
from service.domain.limits import (
    MAX_PASSWORD_CHARS,
    MAX_USER_ID,
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


class TransferRequest(StrictBody):
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
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")

    @model_validator(mode="after")
    def exactly_one_recipient(self) -> "TransferRequest":
        # Naming both is refused even when one of them is null.
        named = {"to_user_id", "to_username"} & self.model_fields_set
        if len(named) != 1 or (self.to_user_id is None and self.to_username is None):
            raise ValueError("give exactly one of to_user_id and to_username")
        return self


class UserOut(BaseModel):
    id: Id
    username: Username


class BalanceOut(BaseModel):
    user_id: Id
    balance_kopecks: int = Field(ge=0, le=MAX_BALANCE_KOPECKS)
    balance: Rubles = Field(description="rubles, two decimal places", examples=["101.00"])
    currency: Literal["RUB"]


class TransactionOut(BaseModel):
    id: Id
    kind: Literal["deposit", "transfer"]
    amount: AmountKopecks = Field(description="kopecks")
    amount_rub: Rubles = Field(examples=["20.00"])
    from_user_id: Id | None = Field(description="null for a deposit")
    to_user_id: Id
    created_at: Timestamp = Field(
        description="RFC 3339, UTC", examples=["2026-11-26T17:14:11.123456Z"]
    )


class TransferOut(TransactionOut):
    direction: Literal["in", "out"]


class DepositPage(BaseModel):
    items: list[TransactionOut]
    next_cursor: str | None


class TransferPage(BaseModel):
    items: list[TransferOut]
    next_cursor: str | None


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorDetail
