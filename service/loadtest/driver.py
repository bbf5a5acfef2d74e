"""The load of ``wallet loadtest``: set up the users, then drive the mix; record it all.

setup: signs up, logs in and funds ``users`` fresh users (names ``lt<run>_<n>``).
run: ``concurrency`` workers on one aiohttp session, the operation drawn from the mix,
until ``duration_s`` has passed. Deposits, transfers, holds, batches and balance reads are
by a random user; captures and voids by the payee of a hold the tool made, refunds by the
recipient of a transfer the tool saw acknowledged (service/loadtest/operations.py).

Every 201 (and a void's 200) is recorded as the transaction or hold its body describes,
checked against what was sent. A POST without an answer (timeout, broken connection) is
retried with its ``Idempotency-Key`` until it is answered, which settles its outcome;
without keys its outcome stays unknown and is counted.
"""

import asyncio
import random
import secrets
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import aiohttp
import orjson

from service.loadtest import operations
from service.loadtest.known import (
    HoldTotals,
    KnownHold,
    Pool,
    Received,
    Reply,
    Txn,
    User,
    error_code,
)
from service.loadtest.stats import Histogram, IdSet
from service.redis.keyspace import SESSION_COOKIE

OPERATIONS = ("deposit", "transfer", "balance", "hold", "capture", "void", "batch", "refund")
# Transfers dominate. Fewer captures and voids than holds (some of which are refused), so
# some holds stay pending and, in a run of over a minute, expire.
DEFAULT_MIX = {
    "deposit": 15,
    "transfer": 55,
    "balance": 10,
    "hold": 6,
    "capture": 3,
    "void": 1,
    "batch": 5,
    "refund": 5,
}
FUNDING_KOPECKS = 100_000
MAX_DEPOSIT_KOPECKS = 1_000
# A transfer, hold or batch is of 1..(1.1 x the sender's available balance as the tool
# knows it): most are accepted, some get 409 insufficient_funds.
OVERDRAW_FACTOR = 1.1
# The acknowledged transfers kept as candidates for refunds; past this many a new one
# replaces a random one, so the run's memory stays bounded.
REFUNDABLE_LIMIT = 20_000
# With --idempotency-keys, this share of answered POSTs is sent again with the same key.
REPLAY_FRACTION = 0.05
# Retries of a POST that got no answer, with its key, to learn its outcome.
RESOLVE_ATTEMPTS = 5
# Sign-up and login hash with argon2 on the server (tens to hundreds of ms of CPU each):
# more at once only queue up there, so they go 8 at a time with a longer timeout.
SETUP_CONCURRENCY = 8
SETUP_TIMEOUT_S = 60.0
CHECK_CONCURRENCY = 64

A = TypeVar("A")
R = TypeVar("R")


class LoadtestAborted(Exception):
    """The service could not be reached, or the users could not be set up."""


@dataclass(frozen=True, slots=True)
class LoadtestConfig:
    url: str
    users: int
    concurrency: int
    duration_s: float
    mix: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_MIX))
    idempotency_keys: bool = False
    # Both given: the ledger checks run.
    redis_url: str | None = None
    database_url: str | None = None
    request_timeout_s: float = 10.0
    writer_wait_s: float = 30.0
    progress: bool = True
    seed: int | None = None


# Settles a POST's answer: (reply, time.time() of the first send, of the answer).
Settle = Callable[[Reply, float, float], None]


class Totals(NamedTuple):
    """A user's acknowledged money: the balance is deposits + received - sent."""

    deposits: int = 0
    received: int = 0
    sent: int = 0
    transactions: int = 0

    @property
    def balance(self) -> int:
        return self.deposits + self.received - self.sent


@dataclass
class Recorder:
    """What the tool got: latencies, outcomes, acknowledged operations, findings."""

    latencies: defaultdict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
    # (operation, status, error code); status 0: the request got no answer.
    outcomes: Counter[tuple[str, int, str]] = field(default_factory=Counter)
    acked: IdSet = field(default_factory=IdSet)
    totals: dict[int, Totals] = field(default_factory=dict)
    deposits: int = 0
    violations: list[str] = field(default_factory=list)
    unknown_outcomes: int = 0
    replays: int = 0
    replays_identical: int = 0
    # Holds: every acknowledged id, the payers' totals, those the tool knows pending (not
    # being captured or voided right now), what it knows pending per payer (for the
    # amounts it asks), how they ended.
    holds: IdSet = field(default_factory=IdSet)
    hold_totals: dict[int, HoldTotals] = field(default_factory=dict)
    pending: Pool[KnownHold] = field(default_factory=Pool)
    held: Counter[int] = field(default_factory=Counter)
    captures: dict[int, int] = field(default_factory=dict)  # capture txn id -> hold id
    voided: IdSet = field(default_factory=IdSet)
    expired: IdSet = field(default_factory=IdSet)  # holds it saw refused or past expiry
    # Holds whose capture or void got no answer, and kopecks of hold requests that got
    # none, per payer: they may or may not be held.
    doubtful: list[KnownHold] = field(default_factory=list)
    doubtful_held: Counter[int] = field(default_factory=Counter)
    batches: int = 0
    batch_legs: int = 0
    refunds: dict[int, int] = field(default_factory=dict)  # refund txn id -> refund_of
    refunded_kopecks: int = 0
    refundable: Pool[Received] = field(default_factory=lambda: Pool(REFUNDABLE_LIMIT))

    def acknowledge(self, txn_id: int, txn: Txn) -> bool:
        if not self.acked.add(txn_id):
            self.violations.append(f"transaction id {txn_id} acknowledged twice, now for {txn}")
            return False
        if txn_id in self.holds:
            self.violations.append(f"transaction id {txn_id} ({txn}) is also a hold's id")
        book(self.totals, txn.from_user_id, txn.to_user_id, txn.amount)
        if txn.from_user_id is None:
            self.deposits += txn.amount
        return True

    def acknowledge_hold(self, hold: KnownHold, rng: random.Random) -> None:
        if not self.holds.add(hold.id):
            self.violations.append(f"hold id {hold.id} acknowledged twice, now for {hold}")
            return
        if hold.id in self.acked:
            self.violations.append(f"hold id {hold.id} ({hold}) is also a transaction's id")
        total = self.hold_totals.get(hold.from_user_id, HoldTotals())
        self.hold_totals[hold.from_user_id] = HoldTotals(
            total.holds + 1, total.kopecks + hold.amount
        )
        self.held[hold.from_user_id] += hold.amount
        self.pending.add(hold, rng)

    def close_hold(self, hold: KnownHold) -> bool:
        """The hold was captured, voided or expired: it holds no more. False if the tool
        had already seen it end."""
        if not hold.open:
            return False
        hold.open = False
        self.held[hold.from_user_id] -= hold.amount
        return True


def book(totals: dict[int, Totals], from_user_id: int | None, to_user_id: int, amount: int) -> None:
    """Adds a transaction to the totals of its parties."""
    to = totals.get(to_user_id, Totals())
    if from_user_id is None:
        totals[to_user_id] = to._replace(
            deposits=to.deposits + amount, transactions=to.transactions + 1
        )
        return
    totals[to_user_id] = to._replace(
        received=to.received + amount, transactions=to.transactions + 1
    )
    sender = totals.get(from_user_id, Totals())
    totals[from_user_id] = sender._replace(
        sent=sender.sent + amount, transactions=sender.transactions + 1
    )


def balance_problem(body: Any) -> str:
    """What is wrong with a GET /api/balance/ answer on its own ("" if nothing): a negative
    balance, held money outside 0..balance, available other than balance - held."""
    try:
        balance, held = int(body["balance_kopecks"]), int(body["held_kopecks"])
        available = int(body["available_kopecks"])
    except (KeyError, TypeError, ValueError):
        return "a balance without balance_kopecks, held_kopecks and available_kopecks"
    if balance < 0:
        return "a negative balance"
    if not 0 <= held <= balance:
        return "held money outside 0..balance"
    if available != balance - held:
        return "available is not balance - held"
    return ""


class Driver:
    def __init__(self, config: LoadtestConfig, session: aiohttp.ClientSession) -> None:
        self.config = config
        self.session = session
        self.base = config.url.rstrip("/")
        self.rng = random.Random(config.seed)
        self.rec = Recorder()
        self.users: list[User] = []
        self.user_by_id: dict[int, User] = {}
        self.weights = [config.mix.get(op, 0) for op in OPERATIONS]
        self.done_in_run = 0
        self.timeout = aiohttp.ClientTimeout(total=config.request_timeout_s)
        self.setup_timeout = aiohttp.ClientTimeout(
            total=max(SETUP_TIMEOUT_S, config.request_timeout_s)
        )

    async def call(
        self,
        op: str,
        method: str,
        path: str,
        user: User | None,
        body: Any = None,
        key: str = "",
        slow: bool = False,
    ) -> Reply | None:
        """One request, recorded; None when it got no answer."""
        headers = {"Cookie": f"{SESSION_COOKIE}={user.cookie}"} if user else {}
        if key:
            headers["Idempotency-Key"] = key
        data = None
        if body is not None:
            data = orjson.dumps(body)
            headers["Content-Type"] = "application/json"
        start = time.perf_counter()
        try:
            async with self.session.request(
                method,
                self.base + path,
                data=data,
                headers=headers,
                timeout=self.setup_timeout if slow else self.timeout,
            ) as response:
                raw = await response.read()
                status = response.status
                cookie = response.cookies.get(SESSION_COOKIE)
        except (aiohttp.ClientError, TimeoutError) as error:
            code = "timeout" if isinstance(error, TimeoutError) else "connection_error"
            self.rec.outcomes[(op, 0, code)] += 1
            return None
        self.rec.latencies[op].add((time.perf_counter() - start) * 1000)
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        self.rec.outcomes[(op, status, error_code(status, parsed))] += 1
        return Reply(status, parsed, raw, None if cookie is None else cookie.value)

    async def post_money(
        self, op: str, user: User, path: str, body: dict[str, Any] | None, settle: Settle
    ) -> Reply | None:
        """A money POST, its answer given to ``settle``; with keys, an unanswered one is
        retried until answered, and a share of the answered ones (those the service
        records under the key) is replayed and must get the identical answer. Returns the
        first answer, None if there was none."""
        key = uuid.uuid4().hex if self.config.idempotency_keys else ""
        sent = time.time()
        reply = await self.call(op, "POST", path, user, body, key)
        for _ in range(RESOLVE_ATTEMPTS if key else 0):
            if reply is not None:
                break
            reply = await self.call(f"{op} (resolve)", "POST", path, user, body, key)
        if reply is None:
            self.rec.unknown_outcomes += 1
            return None
        settle(reply, sent, time.time())
        recorded = reply.status in (200, 201, 409) or reply.code == "refund_exceeds_transfer"
        if key and recorded and self.rng.random() < REPLAY_FRACTION:
            again = await self.call(f"{op} (replay)", "POST", path, user, body, key)
            if again is None:
                return reply
            self.rec.replays += 1
            if (again.status, again.raw) == (reply.status, reply.raw):
                self.rec.replays_identical += 1
                return reply
            self.rec.violations.append(
                f"{op} replayed with key {key}: {again.status} {again.raw!r},"
                f" first answer {reply.status} {reply.raw!r}"
            )
            if again.status == 201 and again.body != reply.body:
                settle(again, sent, time.time())  # it moved money again: count it
        return reply

    def settle_money(self, op: str, user: User, body: dict[str, int], reply: Reply) -> None:
        """A deposit's or a transfer's 201: the transaction as sent, else a violation."""
        if reply.status != 201:
            return
        kind = "transfer" if "to_user_id" in body else "deposit"
        sent = Txn(
            kind,
            user.id if kind == "transfer" else None,
            body.get("to_user_id", user.id),
            body["amount"],
        )
        got = reply.body if isinstance(reply.body, dict) else {}
        fields = ("kind", "from_user_id", "to_user_id", "amount")
        if tuple(got.get(name) for name in fields) != sent or type(got.get("id")) is not int:
            self.rec.violations.append(f"{op} by user {user.id}: sent {sent}, got {reply.raw!r}")
            return
        if self.rec.acknowledge(got["id"], sent) and kind == "transfer":
            self.received(got["id"], sent)

    def received(self, txn_id: int, txn: Txn) -> None:
        """An acknowledged transfer: its recipient may refund it."""
        assert txn.from_user_id is not None
        refundable = Received(txn_id, txn.from_user_id, txn.to_user_id, txn.amount)
        self.rec.refundable.add(refundable, self.rng)

    async def deposit_or_transfer(
        self, op: str, user: User, path: str, body: dict[str, int]
    ) -> Reply | None:
        def settle(reply: Reply, sent: float, answered: float) -> None:
            self.settle_money(op, user, body, reply)

        return await self.post_money(op, user, path, body, settle)

    def other_user(self, user: User) -> User:
        other = self.rng.choice(self.users)
        while other.id == user.id:
            other = self.rng.choice(self.users)
        return other

    def ceiling(self, user: User) -> int:
        """The most a spending request of the user asks: a little over what the tool knows
        is available, so that most are accepted and some refused."""
        available = self.rec.totals[user.id].balance - self.rec.held[user.id]
        return max(1, int(available * OVERDRAW_FACTOR))

    async def set_up_user(self, username: str, password: str) -> User:
        credentials = {"username": username, "password": password}
        reply = await self._answered("sign-up", "/api/sign-up/", credentials)
        # A retried sign-up may find the name taken by its own first attempt; the
        # names are random, so that is the only way it can be taken.
        if reply.status != 201 and error_code(reply.status, reply.body) != "username_taken":
            raise LoadtestAborted(f"sign-up of {username}: {reply.status} {reply.raw[:300]!r}")
        reply = await self._answered("login", "/api/login/", credentials)
        if reply.status != 200:
            raise LoadtestAborted(f"login of {username}: {reply.status} {reply.raw[:300]!r}")
        if not reply.cookie:
            raise LoadtestAborted(f"the login of {username} set no {SESSION_COOKIE} cookie")
        user = User(int(reply.body["id"]), username, reply.cookie)
        self.rec.totals[user.id] = Totals()
        funding = {"amount": FUNDING_KOPECKS}
        funded = await self.deposit_or_transfer("fund", user, "/api/balance/deposit/", funding)
        if self.rec.totals[user.id].deposits != FUNDING_KOPECKS:
            answer = "no answer" if funded is None else f"{funded.status} {funded.raw[:300]!r}"
            raise LoadtestAborted(f"the funding deposit of {username}: {answer}")
        return user

    async def _answered(self, op: str, path: str, credentials: dict[str, str]) -> Reply:
        """A setup POST, sent again (up to RESOLVE_ATTEMPTS times) while it gets no answer."""
        for _ in range(1 + RESOLVE_ATTEMPTS):
            reply = await self.call(op, "POST", path, None, credentials, slow=True)
            if reply is not None:
                return reply
        raise LoadtestAborted(f"{op} of {credentials['username']}: no answer from the service")

    async def set_up(self) -> None:
        """Checks that the service answers, then sets up the users."""
        if await self.call("healthz", "GET", "/healthz", None) is None:
            raise LoadtestAborted(f"cannot reach the service at {self.base}")
        prefix, password = f"lt{secrets.token_hex(4)}_", secrets.token_urlsafe(16)
        names = (f"{prefix}{n}" for n in range(self.config.users))
        limit = min(self.config.concurrency, SETUP_CONCURRENCY)
        self.users = await bounded_map(limit, lambda name: self.set_up_user(name, password), names)
        self.user_by_id = {user.id: user for user in self.users}

    async def one_operation(self) -> None:
        rng, users = self.rng, self.users
        op = rng.choices(OPERATIONS, weights=self.weights)[0]
        user = rng.choice(users)
        if op == "balance":
            reply = await self.call("balance", "GET", "/api/balance/", user)
            problem = balance_problem(reply.body) if reply and reply.status == 200 else ""
            if reply and problem:
                self.rec.violations.append(f"user {user.id}: {problem} {reply.raw!r}")
        elif op == "deposit":
            body = {"amount": rng.randint(1, MAX_DEPOSIT_KOPECKS)}
            await self.deposit_or_transfer("deposit", user, "/api/balance/deposit/", body)
        elif op == "hold":
            await operations.hold(self, user)
        elif op == "capture" or op == "void":
            await operations.capture_or_void(self, op)
        elif op == "batch":
            await operations.batch(self, user)
        elif op == "refund":
            await operations.refund(self)
        else:
            await self.transfer(user)
        self.done_in_run += 1

    async def transfer(self, user: User) -> None:
        to = self.other_user(user)
        body = {"to_user_id": to.id, "amount": self.rng.randint(1, self.ceiling(user))}
        await self.deposit_or_transfer("transfer", user, "/api/balance/transfer/", body)

    async def run(self, deadline: float) -> None:
        """The workers, each sending one request after another until the deadline."""

        async def worker() -> None:
            while loop.time() < deadline:
                await self.one_operation()

        loop = asyncio.get_running_loop()
        await asyncio.gather(*(worker() for _ in range(self.config.concurrency)))


async def bounded_map(
    limit: int, function: Callable[[A], Awaitable[R]], items: Iterable[A]
) -> list[R]:
    """``function`` of each item, in order, at most ``limit`` running at a time; the first
    failure cancels the rest and is raised."""
    semaphore = asyncio.Semaphore(limit)

    async def one(item: A) -> R:
        async with semaphore:
            return await function(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def client_session(config: LoadtestConfig) -> aiohttp.ClientSession:
    """One session for the whole run: a connector sized for the concurrency, no cookie jar
    (each request carries its user's cookie); ``Driver.call`` gives each request a timeout."""
    connector = aiohttp.TCPConnector(limit=config.concurrency, limit_per_host=config.concurrency)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
