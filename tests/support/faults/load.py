"""A small load driver for the fault tests: users who deposit and transfer concurrently,
every request with an Idempotency-Key, retried with the same key until it gets a definite
answer, as a careful client of a payments API would.

Every answer is recorded: a 201 with its transaction, a refusal (404, 409, 422) with its
code, and every failed attempt (a dropped connection, a timeout, a 5xx) that was retried.

Unkeyed, the driver is a careless client instead: each request is sent once, without an
Idempotency-Key, and its one answer is recorded (``Answer``). Every such request moves a
different amount, so the stream tells which request a transaction is.
"""

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

PASSWORD = "fault-test-password"
SESSION_COOKIE = "wallet_session"
# Statuses that are a definite answer: the request was applied (201) or refused.
FINAL_STATUSES = frozenset({201, 404, 409, 422})


@dataclass(frozen=True, slots=True)
class Ack:
    """A transaction acknowledged with 201."""

    key: str
    txn_id: int
    kind: str
    from_user_id: int | None
    to_user_id: int
    amount: int
    owner: int  # the user whose Idempotency-Key it is
    at: float  # time.monotonic() of the 201
    attempts: int
    # time.time() when the attempt that got the 201 was sent, and the transaction's
    # created_at (Redis TIME: the same machine's clock). Created before it was sent: an
    # earlier attempt applied it.
    sent_wall: float
    created_at_us: int

    @property
    def replayed_after_failure(self) -> bool:
        """Applied by an attempt whose answer was lost; the retry got the replay."""
        return self.attempts > 1 and self.created_at_us < self.sent_wall * 1_000_000


@dataclass(frozen=True, slots=True)
class Answer:
    """The one answer to a request sent once without an Idempotency-Key."""

    kind: str  # "deposit" or "transfer"
    from_user_id: int | None
    to_user_id: int
    amount: int  # different for every unkeyed request: it names the request in the stream
    status: int  # 0: no HTTP answer (the connection dropped, the client timed out)
    code: str | None  # the error code of a refusal
    retry_after: str | None  # the Retry-After header, if any
    txn_id: int | None  # the transaction a 201 names
    latency_s: float

    @property
    def says_unknown(self) -> bool:
        """503 outcome_unknown, without Retry-After: the contract's honest "I don't know"."""
        return self.status == 503 and self.code == "outcome_unknown" and self.retry_after is None


@dataclass(slots=True)
class UserSession:
    id: int
    username: str
    cookie: str = ""


@dataclass(slots=True)
class Request:
    key: str
    owner: int
    path: str
    body: dict[str, Any]


@dataclass(slots=True)
class LoadStats:
    acks: dict[str, Ack] = field(default_factory=dict)  # by Idempotency-Key
    refusals: Counter[str] = field(default_factory=Counter)
    # Failed attempts that were retried, by cause ("ServerDisconnectedError", "500", ...).
    failures: Counter[str] = field(default_factory=Counter)
    # Requests that never got a definite answer (the client gave up on them).
    unanswered: dict[str, Request] = field(default_factory=dict)
    # A 201 whose replay named another transaction than the first 201 for the same key.
    conflicting_replays: list[tuple[str, int, int]] = field(default_factory=list)
    # (time.monotonic(), status or failure) for every attempt, for windows of time.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    # Unkeyed requests, each sent once, with their one answer.
    answers: list[Answer] = field(default_factory=list)

    def answered_between(self, start: float, end: float, status: str = "201") -> int:
        return sum(1 for at, what in self.timeline if start <= at < end and what == status)

    def failures_between(self, start: float, end: float) -> int:
        return sum(
            1
            for at, what in self.timeline
            if start <= at < end and not (what.isdigit() and int(what) in FINAL_STATUSES)
        )

    def first_ack_after(self, moment: float) -> float | None:
        return min((a.at for a in self.acks.values() if a.at >= moment), default=None)


class LoadDriver:
    """Users of one running service; ``run`` drives deposits and transfers among them."""

    def __init__(
        self,
        base_url: str,
        *,
        prefix: str,
        seed: int = 0,
        request_timeout_s: float = 10.0,
        give_up_after_s: float = 90.0,
    ) -> None:
        self.base_url = base_url
        self.prefix = prefix
        self.random = random.Random(seed)
        self.users: list[UserSession] = []
        self.stats = LoadStats()
        self.give_up_after_s = give_up_after_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._http: aiohttp.ClientSession | None = None
        self._serial = 0
        self._relogin_locks: dict[int, asyncio.Lock] = {}

    async def __aenter__(self) -> "LoadDriver":
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=256),
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._http is not None:
            await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None, "use `async with LoadDriver(...)`"
        return self._http

    def retarget(self, base_url: str) -> None:
        """Points the users at another API (a restarted service on a new port)."""
        self.base_url = base_url

    # Users.

    async def _post_json(
        self, path: str, body: dict[str, Any], cookie: str = "", key: str = ""
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = {}
        if cookie:
            headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
        if key:
            headers["Idempotency-Key"] = key
        async with self.http.post(f"{self.base_url}{path}", json=body, headers=headers) as resp:
            payload = await resp.json(content_type=None) if resp.status != 204 else None
            return resp.status, payload, resp

    async def add_users(self, count: int) -> None:
        async def one(index: int) -> UserSession:
            username = f"{self.prefix}.user{index}"
            status, body, _ = await self._post_json(
                "/api/sign-up/", {"username": username, "password": PASSWORD}
            )
            assert status == 201, (status, body)
            user = UserSession(int(body["id"]), username)
            await self.login(user)
            return user

        start = len(self.users)
        self.users += await asyncio.gather(*(one(start + i) for i in range(count)))

    async def login(self, user: UserSession, retry_for_s: float = 15.0) -> None:
        """Logs in, retrying while the service answers 5xx or not at all."""
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                status, body, response = await self._post_json(
                    "/api/login/", {"username": user.username, "password": PASSWORD}
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                status, body, response = 0, repr(error), None
            if status == 200 and response is not None:
                user.cookie = response.cookies[SESSION_COOKIE].value
                return
            assert status == 0 or status >= 500, (status, body)
            assert time.monotonic() < deadline, (status, body)
            await asyncio.sleep(0.1)

    async def login_all(self) -> None:
        await asyncio.gather(*(self.login(u) for u in self.users))

    async def _relogin(self, user: UserSession, stale_cookie: str) -> None:
        lock = self._relogin_locks.setdefault(user.id, asyncio.Lock())
        async with lock:
            if user.cookie == stale_cookie:  # not already renewed by another task
                await self.login(user)

    def _user(self, user_id: int) -> UserSession:
        return next(u for u in self.users if u.id == user_id)

    # Money.

    def next_request(self, unique_amount: bool = False) -> Request:
        """A deposit (30 %) or a transfer to another user, with a new Idempotency-Key.
        With ``unique_amount`` it moves its serial number of kopecks, an amount no other
        request moves (below the funding deposits): the stream then tells which request a
        transaction is, without a key."""
        self._serial += 1
        user = self.random.choice(self.users)
        key = f"{self.prefix}-{user.id}-{self._serial}"
        if len(self.users) < 2 or self.random.random() < 0.3:
            amount = self._serial if unique_amount else self.random.randint(1_000, 100_000)
            return Request(key, user.id, "/api/balance/deposit/", {"amount": amount})
        to = self.random.choice([u for u in self.users if u.id != user.id])
        amount = self._serial if unique_amount else self.random.randint(1, 20_000)
        body = {"to_user_id": to.id, "amount": amount}
        return Request(key, user.id, "/api/balance/transfer/", body)

    async def send(self, request: Request) -> int | None:
        """Sends until a definite answer, retrying with the same key; returns the status,
        None if it gave up after ``give_up_after_s``."""
        user = self._user(request.owner)
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            cookie = user.cookie
            sent_wall = time.time()
            try:
                status, body, _ = await self._post_json(
                    request.path, request.body, cookie=cookie, key=request.key
                )
            except (aiohttp.ClientError, TimeoutError) as error:
                self._failed(type(error).__name__)
            else:
                now = time.monotonic()
                self.stats.timeline.append((now, str(status)))
                if status == 201:
                    self._acknowledged(request, body, now, attempts, sent_wall)
                    return status
                if status in FINAL_STATUSES:
                    code = body.get("error", {}).get("code", "?") if isinstance(body, dict) else "?"
                    self.stats.refusals[f"{status} {code}"] += 1
                    return status
                self.stats.failures[str(status)] += 1
                if status == 401:  # the session was lost (Redis lost): log in again
                    try:
                        await self._relogin(user, cookie)
                    except (AssertionError, aiohttp.ClientError, TimeoutError) as error:
                        self._failed(f"relogin {type(error).__name__}")
            if time.monotonic() - started > self.give_up_after_s:
                self.stats.unanswered[request.key] = request
                return None
            await asyncio.sleep(min(0.05 * attempts, 0.5) * (0.5 + self.random.random()))

    def _failed(self, cause: str) -> None:
        self.stats.failures[cause] += 1
        self.stats.timeline.append((time.monotonic(), cause))

    def _acknowledged(
        self, request: Request, body: Any, at: float, attempts: int, sent_wall: float
    ) -> None:
        ack = Ack(
            key=request.key,
            txn_id=int(body["id"]),
            kind=str(body["kind"]),
            from_user_id=body["from_user_id"],
            to_user_id=int(body["to_user_id"]),
            amount=int(body["amount"]),
            owner=request.owner,
            at=at,
            attempts=attempts,
            sent_wall=sent_wall,
            created_at_us=_micros(str(body["created_at"])),
        )
        first = self.stats.acks.get(request.key)
        if first is None:
            self.stats.acks[request.key] = ack
        elif first.txn_id != ack.txn_id:
            self.stats.conflicting_replays.append((request.key, first.txn_id, ack.txn_id))

    async def run(self, stop: asyncio.Event, concurrency: int = 16, unkeyed: bool = False) -> None:
        """``concurrency`` clients, each sending one request at a time until ``stop``;
        unkeyed: each request once, without an Idempotency-Key (``send_once``)."""

        async def client() -> None:
            while not stop.is_set():
                if unkeyed:
                    await self.send_once(self.next_request(unique_amount=True))
                else:
                    await self.send(self.next_request())

        await asyncio.gather(*(client() for _ in range(concurrency)))

    async def fund(self, amount: int) -> None:
        """A deposit of ``amount`` for every user (with a key, retried until answered), so
        that transfers can succeed from the start."""
        for user in self.users:
            deposit = Request(f"{self.prefix}-fund-{user.id}", user.id, "/api/balance/deposit/",
                              {"amount": amount})  # fmt: skip
            assert await self.send(deposit) == 201

    async def send_once(self, request: Request) -> Answer:
        """Sends the request once, without its Idempotency-Key, and records the answer."""
        user = self._user(request.owner)
        body = request.body
        started = time.monotonic()
        status, code, retry_after, txn_id = 0, None, None, None
        try:
            status, payload, response = await self._post_json(request.path, body, user.cookie)
            retry_after = response.headers.get("Retry-After")
            if status == 201:
                txn_id = int(payload["id"])
            elif isinstance(payload, dict):
                code = payload.get("error", {}).get("code")
        except (aiohttp.ClientError, TimeoutError) as error:
            self._failed(type(error).__name__)
        deposit = "to_user_id" not in body
        answer = Answer(
            kind="deposit" if deposit else "transfer",
            from_user_id=None if deposit else request.owner,
            to_user_id=request.owner if deposit else int(body["to_user_id"]),
            amount=int(body["amount"]),
            status=status,
            code=code,
            retry_after=retry_after,
            txn_id=txn_id,
            latency_s=time.monotonic() - started,
        )
        self.stats.answers.append(answer)
        return answer

    async def resend(self, acks: list[Ack]) -> list[tuple[Ack, int, Any]]:
        """Sends acknowledged requests again, same key and body: (ack, status, body)."""
        results = []
        for ack in acks:
            user = self._user(ack.owner)
            if ack.kind == "deposit":
                path, body = "/api/balance/deposit/", {"amount": ack.amount}
            else:
                path = "/api/balance/transfer/"
                body = {"to_user_id": ack.to_user_id, "amount": ack.amount}
            status, payload, _ = await self._post_json(path, body, user.cookie, ack.key)
            results.append((ack, status, payload))
        return results

    async def readyz(self) -> tuple[int, Any]:
        async with self.http.get(f"{self.base_url}/readyz") as response:
            return response.status, await response.json(content_type=None)


def _micros(rfc3339: str) -> int:
    moment = datetime.fromisoformat(rfc3339.replace("Z", "+00:00"))
    return (moment - _EPOCH) // timedelta(microseconds=1)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Loader:
    """Runs a driver in the background: ``async with Loader(driver): ...``."""

    def __init__(self, driver: LoadDriver, concurrency: int = 16, unkeyed: bool = False) -> None:
        self.driver = driver
        self.concurrency = concurrency
        self.unkeyed = unkeyed
        self.stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.started_at = 0.0
        self.stopped_at = 0.0

    async def __aenter__(self) -> "Loader":
        self.started_at = time.monotonic()
        self._task = asyncio.create_task(self.driver.run(self.stop, self.concurrency, self.unkeyed))
        return self

    async def finish(self) -> None:
        """Stops starting new requests and waits for those in flight (with their retries)."""
        self.stop.set()
        if self._task is not None:
            await self._task
            self._task = None
            self.stopped_at = time.monotonic()

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None and exc[0] is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
            return
        await self.finish()
