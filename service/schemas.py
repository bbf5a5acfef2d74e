"""Request and response models. The same models validate input and generate the OpenAPI spec."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service.amounts import MAX_AMOUNT_KOPECKS

USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{3,32}$"

Username = Annotated[str, StringConstraints(pattern=USERNAME_PATTERN)]
Password = Annotated[str, StringConstraints(min_length=8, max_length=128)]
AmountKopecks = Annotated[int, Field(ge=1, le=MAX_AMOUNT_KOPECKS)]
UserId = Annotated[int, Field(ge=1, le=10**15 - 1)]


class StrictBody(BaseModel):
    """JSON integers only for integers, no coercion, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Credentials(StrictBody):
    username: Username = Field(description="3-32 of A-Z a-z 0-9 _ . -; unique regardless of case")
    password: Password


class DepositRequest(StrictBody):
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")


class TransferRequest(StrictBody):
    to_user_id: UserId | None = None
    to_username: Username | None = None
    amount: AmountKopecks = Field(description="kopecks, a JSON integer")

    @model_validator(mode="after")
    def exactly_one_recipient(self) -> "TransferRequest":
        if (self.to_user_id is None) == (self.to_username is None):
            raise ValueError("give exactly one of to_user_id and to_username")
        return self


class UserOut(BaseModel):
    id: int
    username: str


class BalanceOut(BaseModel):
    user_id: int
    balance_kopecks: int
    balance: str = Field(description="rubles, two decimal places", examples=["101.00"])
    currency: Literal["RUB"]


class TransactionOut(BaseModel):
    id: int
    kind: Literal["deposit", "transfer"]
    amount: int = Field(description="kopecks")
    amount_rub: str = Field(examples=["20.00"])
    from_user_id: int | None
    to_user_id: int
    created_at: str = Field(description="RFC 3339, UTC", examples=["2026-11-26T17:14:11.123456Z"])


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
