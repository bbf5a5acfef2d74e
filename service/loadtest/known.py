"""The records of ``wallet loadtest``: its users, the answers it got, and what it knows of
the holds it made and of the transfers its users received: the pools the capture, void and
refund operations draw from (each item is taken out while one request works on it, so no
two requests race on one hold or one refund total), and a hold's expiry as the tool's own
clock bounds it.

A hold was created at some instant between the first send of its request and the answer,
so it expires between ``send + expires_in_s`` and ``answer + expires_in_s``. Measured on
the tool's clock this needs no agreement with the server's clock, only the same rate.
"""

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

T = TypeVar("T")
# Allowance for the two clocks' rates and for the tool's own scheduling, in seconds.
EXPIRY_SLACK_S = 0.5


class User(NamedTuple):
    id: int
    username: str
    cookie: str


class Txn(NamedTuple):
    """An acknowledged operation, as its 201 body described it."""

    kind: str
    from_user_id: int | None
    to_user_id: int
    amount: int


def error_code(status: int, body: Any) -> str:
    if status < 400:
        return ""
    error = body.get("error") if isinstance(body, dict) else None
    return str(error.get("code")) if isinstance(error, dict) else "not_json"


class Reply(NamedTuple):
    status: int
    body: Any
    raw: bytes
    cookie: str | None

    @property
    def code(self) -> str:
        return error_code(self.status, self.body)


@dataclass(slots=True)
class KnownHold:
    """An acknowledged hold; ``open`` until the tool saw it captured, voided or expired."""

    id: int
    from_user_id: int
    to_user_id: int
    amount: int
    earliest_expiry: float  # time.time() bounds of the instant it expires
    latest_expiry: float
    open: bool = True

    def pending_throughout(self, until: float) -> bool:
        """Surely still pending at every instant up to ``until``."""
        return until < self.earliest_expiry - EXPIRY_SLACK_S

    def expired_from(self, since: float) -> bool:
        """Surely expired at every instant from ``since`` on."""
        return since >= self.latest_expiry + EXPIRY_SLACK_S


@dataclass(slots=True)
class Received:
    """An acknowledged transfer (a capture or a batch leg included) that its recipient may
    refund, with what the tool saw refunded of it so far."""

    txn_id: int
    from_user_id: int
    to_user_id: int
    amount: int
    refunded: int = 0

    @property
    def left(self) -> int:
        return self.amount - self.refunded


class HoldTotals(NamedTuple):
    """A payer's holds: how many, and their amounts added up."""

    holds: int = 0
    kopecks: int = 0


class Pool(Generic[T]):
    """Items to draw from at random; with a limit, a new item past it replaces a random
    one (the replaced one is simply never drawn again)."""

    __slots__ = ("items", "limit")

    def __init__(self, limit: int = 0) -> None:
        self.items: list[T] = []
        self.limit = limit

    def add(self, item: T, rng: random.Random) -> None:
        if self.limit and len(self.items) >= self.limit:
            self.items[rng.randrange(len(self.items))] = item
        else:
            self.items.append(item)

    def take(self, rng: random.Random) -> T | None:
        """A random item, taken out; None when the pool is empty."""
        if not self.items:
            return None
        index = rng.randrange(len(self.items))
        self.items[index], self.items[-1] = self.items[-1], self.items[index]
        return self.items.pop()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)


def held_bounds(
    pending: Iterable[KnownHold], doubtful: Iterable[KnownHold], sent: float, answered: float
) -> dict[int, tuple[int, int]]:
    """Per payer, the least and the most ``held_kopecks`` a balance read between ``sent``
    and ``answered`` may show: the holds surely pending all that time count in both, those
    that may have expired meanwhile (or whose capture or void got no answer) only in the
    most, those surely expired in neither."""
    bounds: dict[int, tuple[int, int]] = {}
    for hold, sure in [(h, True) for h in pending] + [(h, False) for h in doubtful]:
        if not hold.open or hold.expired_from(sent):
            continue
        low, high = bounds.get(hold.from_user_id, (0, 0))
        certain = sure and hold.pending_throughout(answered)
        bounds[hold.from_user_id] = (low + hold.amount * certain, high + hold.amount)
    return bounds
