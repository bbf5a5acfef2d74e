"""What the fault tests compare: the client's 201s, the PostgreSQL ledger, the Redis
stream, balances and idempotency records."""

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import asyncpg

from service.domain.transactions import Transaction
from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.faults.load import Ack, Answer


@dataclass(frozen=True, slots=True)
class Row:
    """A ledger row or a stream record, as far as the comparison needs."""

    txn_id: int
    kind: str
    from_user_id: int | None
    to_user_id: int
    amount: int
    key: str | None

    @property
    def owner(self) -> int:
        return self.to_user_id if self.from_user_id is None else self.from_user_id

    def matches(self, ack: Ack) -> bool:
        return (self.kind, self.from_user_id, self.to_user_id, self.amount, self.key) == (
            ack.kind,
            ack.from_user_id,
            ack.to_user_id,
            ack.amount,
            ack.key,
        )


def asyncpg_dsn(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def ledger_rows(database_url: str) -> list[Row]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        records = await connection.fetch(
            "SELECT id, kind, from_user_id, to_user_id, amount_kopecks, idempotency_key"
            " FROM transactions ORDER BY id"
        )
    finally:
        await connection.close()
    return [Row(r[0], r[1], r[2], r[3], r[4], r[5]) for r in records]


async def ledger_ids(database_url: str) -> set[int]:
    """The ids of the ledger's transactions: a ``transactions`` row, or, for a transfer
    across buckets, its reservation's row (docs/scaling.md, "In the ledger")."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT id FROM transactions UNION ALL SELECT id FROM transfer_reservations"
        )
        return {r[0] for r in rows}
    finally:
        await connection.close()


async def wait_until_in_ledger(database_url: str, ids: Iterable[int], limit_s: float) -> float:
    """Seconds until every id is in the ledger; raises AssertionError after ``limit_s``."""
    wanted = set(ids)
    started = time.monotonic()
    while True:
        try:
            missing = wanted - await ledger_ids(database_url)
        except (OSError, asyncpg.PostgresError):
            missing = wanted  # the database is still coming back
        if not missing:
            return time.monotonic() - started
        if time.monotonic() - started > limit_s:
            raise AssertionError(
                f"{len(missing)} acknowledged transactions not in the ledger after {limit_s} s,"
                f" e.g. {sorted(missing)[:10]}"
            )
        await asyncio.sleep(0.1)


def _row(txn: Transaction) -> Row:
    return Row(
        txn.txn_id,
        txn.kind,
        txn.from_user_id,
        txn.to_user_id,
        txn.amount_kopecks,
        txn.idempotency_key,
    )


async def stream_transactions(redis: RedisClient) -> list[Transaction]:
    entries = cast(
        list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(keyspace.txn_stream(BUCKET))
    )
    return [Transaction.from_stream_fields(fields) for _, fields in entries]


async def stream_rows(redis: RedisClient) -> list[Row]:
    return [_row(t) for t in await stream_transactions(redis)]


async def redis_balances(redis: RedisClient, user_ids: Iterable[int]) -> dict[int, int | None]:
    ids = list(user_ids)
    async with redis.pipeline(transaction=True) as pipe:
        for user_id in ids:
            pipe.hget(keyspace.user(user_id), "balance_kopecks")
        raw = cast(list[bytes | None], await pipe.execute())
    return {u: None if r is None else int(r) for u, r in zip(ids, raw, strict=True)}


async def idempotency_txn_ids(redis: RedisClient, acks: Iterable[Ack]) -> dict[str, int | None]:
    """The txn id each acknowledged request's Idempotency-Key record names (None: none)."""
    acks = list(acks)
    async with redis.pipeline(transaction=False) as pipe:
        for ack in acks:
            pipe.hget(keyspace.idempotency(ack.owner, ack.key), "txn_id")
        raw = cast(list[bytes | None], await pipe.execute())
    return {a.key: None if r is None else int(r) for a, r in zip(acks, raw, strict=True)}


@dataclass(slots=True)
class Replay:
    """Balances obtained by applying the stream records in order."""

    balances: Counter[int] = field(default_factory=Counter)
    # Records whose stored after-balances disagree with the replay: a half-applied
    # transaction or a lost update would show here.
    inconsistent: list[int] = field(default_factory=list)
    negative: list[int] = field(default_factory=list)


def replay(txns: Iterable[Transaction]) -> Replay:
    result = Replay()
    for txn in txns:
        if txn.from_user_id is not None:
            result.balances[txn.from_user_id] -= txn.amount_kopecks
            if result.balances[txn.from_user_id] < 0:
                result.negative.append(txn.txn_id)
            if result.balances[txn.from_user_id] != txn.from_balance_kopecks:
                result.inconsistent.append(txn.txn_id)
        result.balances[txn.to_user_id] += txn.amount_kopecks
        if result.balances[txn.to_user_id] != txn.to_balance_kopecks:
            result.inconsistent.append(txn.txn_id)
    return result


@dataclass(slots=True)
class Verdict:
    """The client's 201s against a record of transactions (the ledger or the stream)."""

    acknowledged: int
    # 201s whose transaction is missing, or stored with other content (ids, then keys:
    # after an id was issued twice, the id alone does not say which 201 was lost).
    lost: list[int]
    # Idempotency-Keys (owner, key) under which more than one transaction is stored,
    # plus keys whose replays named two different transactions.
    duplicated: list[tuple[int, str | None]]
    # Stored transactions that no 201 names (applied, but the client never heard of it).
    unacknowledged: list[int]
    # Stored transactions without an Idempotency-Key (the driver always sends one).
    without_key: list[int]
    lost_keys: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.without_key)

    def summary(self) -> str:
        return (
            f"{self.acknowledged} acknowledged, {len(self.lost)} lost {self.lost[:10]},"
            f" {len(self.duplicated)} duplicated {self.duplicated[:10]},"
            f" {len(self.unacknowledged)} applied without a 201 {self.unacknowledged[:10]},"
            f" {len(self.without_key)} without a key"
        )


def compare(
    acks: Iterable[Ack], rows: Iterable[Row], conflicting_replays: Iterable[object] = ()
) -> Verdict:
    acks = list(acks)
    rows = list(rows)
    by_id = {row.txn_id: row for row in rows}
    per_key = Counter((row.owner, row.key) for row in rows if row.key is not None)
    acked_ids = {ack.txn_id for ack in acks}
    duplicated: list[tuple[int, str | None]] = [key for key, n in per_key.items() if n > 1]
    duplicated += [(0, str(c)) for c in conflicting_replays]
    lost = [a for a in acks if a.txn_id not in by_id or not by_id[a.txn_id].matches(a)]
    return Verdict(
        acknowledged=len(acks),
        lost=sorted(a.txn_id for a in lost),
        lost_keys=[a.key for a in lost],
        duplicated=duplicated,
        unacknowledged=sorted(row.txn_id for row in rows if row.txn_id not in acked_ids),
        without_key=sorted(row.txn_id for row in rows if row.key is None),
    )


async def check_stream_and_balances(
    redis: RedisClient, acks: list[Ack], user_ids: list[int]
) -> dict[int, int]:
    """Every 201 is in the stream once (and nothing the stream holds lacks a 201), and each
    balance is what the stream's transactions give; returns those balances."""
    verdict = compare(acks, await stream_rows(redis))
    assert verdict.ok, verdict.summary()
    assert not verdict.unacknowledged, verdict.summary()
    applied = replay(await stream_transactions(redis))
    assert not applied.inconsistent
    expected = {user_id: applied.balances[user_id] for user_id in user_ids}
    assert await redis_balances(redis, user_ids) == expected
    return expected


@dataclass(slots=True)
class AnswerVerdict:
    """Unkeyed answers against the stream: an applied request may be answered 201 (with its
    transaction), 503 outcome_unknown, or not at all; anything else says it was not applied
    (a refusal, a 503 with Retry-After) and is a lie about money."""

    answers: int
    applied: int
    # Applied, yet answered as refused or as "retry later": (answer, stream txn id).
    lied: list[tuple[Answer, int]] = field(default_factory=list)
    # A 201 whose transaction is not in the stream (or another one).
    phantom: list[Answer] = field(default_factory=list)
    # Unkeyed transactions no request explains, or one request applied twice.
    unexplained: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lied or self.phantom or self.unexplained)

    def summary(self) -> str:
        return (
            f"{self.answers} answers, {self.applied} applied; {len(self.lied)} applied but"
            f" answered as not {self.lied[:5]}; {len(self.phantom)} 201s not in the stream"
            f" {self.phantom[:5]}; {len(self.unexplained)} unexplained {self.unexplained[:10]}"
        )


def compare_answers(answers: Iterable[Answer], stream: Iterable[Transaction]) -> AnswerVerdict:
    answers = list(answers)
    unkeyed = [t for t in stream if t.idempotency_key is None]
    by_amount: dict[int, Transaction] = {}
    verdict = AnswerVerdict(answers=len(answers), applied=0)
    for txn in unkeyed:
        if txn.amount_kopecks in by_amount:
            verdict.unexplained.append(txn.txn_id)  # one amount, one request: applied twice
        by_amount[txn.amount_kopecks] = txn
    for answer in answers:
        if answer.amount not in by_amount:
            if answer.status == 201:
                verdict.phantom.append(answer)
            continue
        txn = by_amount.pop(answer.amount)
        verdict.applied += 1
        same = (txn.kind, txn.from_user_id, txn.to_user_id) == (
            answer.kind,
            answer.from_user_id,
            answer.to_user_id,
        )
        if answer.status == 201:
            if not same or answer.txn_id != txn.txn_id:
                verdict.phantom.append(answer)
        elif not (answer.says_unknown or answer.status == 0):
            verdict.lied.append((answer, txn.txn_id))
    verdict.unexplained += [txn.txn_id for txn in by_amount.values()]
    return verdict
