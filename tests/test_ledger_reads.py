"""The ledger's reads with hand-written stream records: histories with refunds, one
transaction by id, past balances, statements, holds. Each read merges PostgreSQL with the
unpersisted tail, so each is tried with everything in the tail (no writer ran), everything
in the ledger, and split between the two."""

import random
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from service.domain.holds import STATUSES, Hold, Status
from service.domain.postings import Posting
from service.domain.transactions import Transaction
from service.ledger.history import HistoryUnavailable, read_history
from service.ledger.hold_reads import Role, list_holds, read_hold
from service.ledger.lookup import find_transaction
from service.ledger.reconcile import ledger_balances
from service.ledger.statements import StatementTooLarge, balance_at, read_statement
from service.redis import keyspace
from service.redis.types import RedisClient
from tests.support.buckets import BUCKET
from tests.support.helpers import persist
from tests.support.records import SECOND, T0, Book, Fields, add_ledger_users, append

# With one bucket, any user finds any transaction or hold by id (the caller checks that
# they are a party to it).
READER = 1
TAIL = 1_000
Store = Callable[..., Awaitable[None]]


@pytest.fixture
async def store(redis_client: RedisClient, db_engine: AsyncEngine) -> Store:
    """``store(records, persisted=n)``: the first n records go into the ledger through the
    writer, the rest stay in the stream unpersisted."""
    await add_ledger_users(db_engine, 1, 2, 3)

    async def write(records: list[Fields], persisted: int) -> None:
        await append(redis_client, *records[:persisted])
        await persist(redis_client, db_engine)
        await append(redis_client, *records[persisted:])

    return write


SPLITS = ["tail only", "ledger only", "mixed"]


def split(records: list[Fields], how: str) -> int:
    return {"tail only": 0, "ledger only": len(records), "mixed": len(records) // 2}[how]


def money_story() -> tuple[Book, list[Fields]]:
    book = Book()
    return book, [
        book.deposit(1, 1_000, T0 + 10),  # 1
        book.transfer(1, 2, 300, T0 + 20),  # 2
        book.transfer(1, 2, 100, T0 + 30),  # 3: two legs of a batch, one instant
        book.transfer(1, 3, 50, T0 + 30),  # 4
        book.refund(2, 1, 120, T0 + 40, refund_of=2),  # 5
        book.deposit(2, 7, T0 + 50),  # 6
        book.refund(3, 1, 50, T0 + 60, refund_of=4),  # 7
    ]


# Histories.


@pytest.mark.parametrize("how", SPLITS)
async def test_refunds_are_in_the_transfer_history_of_both_parties(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, how: str
) -> None:
    _, records = money_story()
    await store(records, split(records, how))

    async def history(user_id: int, direction: str, kind: str = "transfer") -> list[int]:
        page = await read_history(
            redis_client,
            db_engine,
            user_id=user_id,
            kind=kind,  # type: ignore[arg-type]
            direction=direction,  # type: ignore[arg-type]
            before=None,
            limit=50,
            tail_max_entries=TAIL,
        )
        return [txn.txn_id for txn in page.postings]

    assert await history(1, "all") == [7, 5, 4, 3, 2]
    assert await history(1, "in") == [7, 5]
    assert await history(1, "out") == [4, 3, 2]
    assert await history(2, "all") == [5, 3, 2]
    assert await history(2, "in") == [3, 2]
    assert await history(2, "out") == [5]
    assert await history(3, "all") == [7, 4]
    assert await history(1, "all", "deposit") == [1]
    assert await history(2, "all", "deposit") == [6]
    async with db_engine.connect() as connection:
        if how == "ledger only":  # the ledger's balances count refunds both ways
            assert await ledger_balances(connection, [1, 2, 3]) == {1: 720, 2: 287, 3: 0}


# One transaction.


@pytest.mark.parametrize("how", SPLITS)
async def test_find_transaction_in_the_tail_or_the_ledger(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, how: str
) -> None:
    _, records = money_story()
    await store(records, split(records, how))
    for fields in records:
        found = await find_transaction(
            redis_client, db_engine, READER, int(fields["id"]), tail_max_entries=TAIL
        )
        assert isinstance(found, Transaction)
        assert found.txn_id == int(fields["id"])
        assert found.kind == fields["kind"]
        assert found.to_balance_kopecks == int(fields["to_balance"])
    refund = await find_transaction(redis_client, db_engine, READER, 5, tail_max_entries=TAIL)
    assert refund is not None
    assert (refund.kind, refund.refund_of, refund.from_user_id) == ("refund", 2, 2)
    for missing in (0, 8, 10**15):
        found = await find_transaction(
            redis_client, db_engine, READER, missing, tail_max_entries=TAIL
        )
        assert found is None


async def test_find_transaction_refuses_to_answer_none_over_an_overflowing_tail(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store
) -> None:
    _, records = money_story()
    await store(records, 2)  # 5 unpersisted
    assert (
        await find_transaction(redis_client, db_engine, READER, 1, tail_max_entries=2) is not None
    )
    assert (
        await find_transaction(redis_client, db_engine, READER, 3, tail_max_entries=2) is not None
    )
    with pytest.raises(HistoryUnavailable):
        await find_transaction(redis_client, db_engine, READER, 6, tail_max_entries=2)
    with pytest.raises(HistoryUnavailable):
        await find_transaction(redis_client, db_engine, READER, 99, tail_max_entries=2)


# Past balances and statements.


def signed(txn: Posting, user_id: int) -> int:
    return txn.amount_kopecks if txn.to_user_id == user_id else -txn.amount_kopecks


@pytest.mark.parametrize("how", SPLITS)
async def test_balance_at_any_instant(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, how: str
) -> None:
    _, records = money_story()
    await store(records, split(records, how))

    async def at(user_id: int, at_us: int) -> int:
        return await balance_at(
            redis_client, db_engine, user_id=user_id, at_us=at_us, tail_max_entries=TAIL
        )

    expected_1 = [(T0, 0), (T0 + 9, 0), (T0 + 10, 1_000), (T0 + 15, 1_000), (T0 + 20, 700)]
    expected_1 += [(T0 + 29, 700), (T0 + 30, 550), (T0 + 40, 670), (T0 + 59, 670)]
    expected_1 += [(T0 + 60, 720), (T0 + 10**12, 720)]
    for at_us, kopecks in expected_1:
        assert await at(1, at_us) == kopecks, at_us
    for at_us, kopecks in [(T0 + 19, 0), (T0 + 20, 300), (T0 + 30, 400), (T0 + 40, 280)]:
        assert await at(2, at_us) == kopecks, at_us
    assert await at(2, T0 + 50) == 287
    assert await at(3, T0 + 30) == 50
    assert await at(3, T0 + 60) == 0
    assert await at(3, T0 - 10**12) == 0


@pytest.mark.parametrize("how", SPLITS)
async def test_statements_add_up_for_every_period(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, how: str
) -> None:
    _, records = money_story()
    await store(records, split(records, how))
    instants = [T0, T0 + 10, T0 + 11, T0 + 20, T0 + 30, T0 + 31, T0 + 40, T0 + 60, T0 + 61]
    for user_id in (1, 2, 3):
        for start in instants:
            for end in instants:
                if end <= start:
                    continue
                statement = await read_statement(
                    redis_client,
                    db_engine,
                    user_id=user_id,
                    from_us=start,
                    to_us=end,
                    max_items=100,
                    tail_max_entries=TAIL,
                )
                items = statement.postings
                assert all(start <= txn.at_us < end for txn in items)
                assert items == sorted(items, key=lambda t: (t.at_us, t.txn_id))
                assert len({t.txn_id for t in items}) == len(items)
                opening = statement.opening_balance_kopecks
                assert opening == await balance_at(
                    redis_client,
                    db_engine,
                    user_id=user_id,
                    at_us=start - 1,
                    tail_max_entries=TAIL,
                )
                assert statement.closing_balance_kopecks == opening + sum(
                    signed(txn, user_id) for txn in items
                )
                running = opening
                for txn in items:
                    running += signed(txn, user_id)
                    assert txn.balance_after_kopecks == running
    whole = await read_statement(
        redis_client,
        db_engine,
        user_id=1,
        from_us=T0 + 20,
        to_us=T0 + 40,
        max_items=3,
        tail_max_entries=TAIL,
    )
    assert [t.txn_id for t in whole.postings] == [2, 3, 4]  # 40 itself is not in
    assert (whole.opening_balance_kopecks, whole.closing_balance_kopecks) == (1_000, 550)
    with pytest.raises(StatementTooLarge):
        await read_statement(
            redis_client,
            db_engine,
            user_id=1,
            from_us=T0 + 20,
            to_us=T0 + 41,
            max_items=3,
            tail_max_entries=TAIL,
        )
    empty = await read_statement(
        redis_client,
        db_engine,
        user_id=1,
        from_us=T0 + 61,
        to_us=T0 + 10**9,
        max_items=3,
        tail_max_entries=TAIL,
    )
    assert (empty.opening_balance_kopecks, empty.closing_balance_kopecks) == (720, 720)
    assert empty.postings == []


async def test_time_reads_are_unavailable_over_an_overflowing_tail(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store
) -> None:
    _, records = money_story()
    await store(records, 0)
    with pytest.raises(HistoryUnavailable):
        await balance_at(redis_client, db_engine, user_id=1, at_us=T0, tail_max_entries=3)
    with pytest.raises(HistoryUnavailable):
        await read_statement(
            redis_client,
            db_engine,
            user_id=1,
            from_us=T0,
            to_us=T0 + 1,
            max_items=3,
            tail_max_entries=3,
        )


# Holds.

LONG = T0 + 1_000 * SECOND
NOW = T0 + 10 * SECOND


def hold_story() -> tuple[Book, list[Fields]]:
    book = Book()
    records = [book.deposit(1, 100_000, T0)]  # 1
    records.append(book.hold(1, 2, 1_000, T0 + 1, LONG))  # 2: captured (later)
    records.append(book.hold(1, 3, 2_000, T0 + 2, LONG))  # 3: pending
    records.append(book.hold(1, 2, 3_000, T0 + 3, T0 + 5 * SECOND))  # 4: expires by time
    records.append(book.deposit(2, 9, T0 + 4))  # 5
    records.append(book.hold(1, 2, 4_000, T0 + 5, LONG))  # 6: voided
    records.append(book.end("hold_voided", 6, T0 + 6))
    records.append(book.hold(1, 3, 5_000, T0 + 7, T0 + 8 * SECOND))  # 7: expired record
    records.append(book.hold(2, 1, 6_000, T0 + 8, LONG))  # 8: user 1 is the payee
    records.append(book.capture(2, 600, T0 + 9))  # 9
    records.append(book.end("hold_expired", 7, T0 + 8 * SECOND))
    return book, records


EXPECTED_AT_NOW: dict[int, Status] = {
    2: "captured",
    3: "pending",
    4: "expired",
    6: "voided",
    7: "expired",
    8: "pending",
}


@pytest.mark.parametrize("persisted", [0, 3, 5, 9, 10, 11])
async def test_holds_merge_the_ledger_and_the_tail(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, persisted: int
) -> None:
    """Split at every interesting point: hold 2 pending in the ledger and captured in the
    tail, holds created only in the tail, an expiry record still in the tail."""
    book, records = hold_story()
    await store(records, persisted)

    async def page(
        status: Status | None = None,
        role: Role | None = None,
        before_id: int | None = None,
        limit: int = 50,
        now_us: int = NOW,
        user_id: int = 1,
    ) -> tuple[list[int], bool]:
        """The ids of a page, before hold ``before_id`` (its instant and id)."""
        before = None
        if before_id is not None:
            before = (int(book.holds[before_id]["created_at_us"]), before_id)
        result = await list_holds(
            redis_client,
            db_engine,
            user_id=user_id,
            status=status,
            role=role,
            before=before,
            limit=limit,
            now_us=now_us,
            tail_max_entries=TAIL,
        )
        return [hold.hold_id for hold in result.holds], result.has_more

    assert await page() == ([8, 7, 6, 4, 3, 2], False)
    for status in STATUSES:
        expected = sorted((i for i, s in EXPECTED_AT_NOW.items() if s == status), reverse=True)
        assert await page(status) == (expected, False), status
    assert await page(role="payee") == ([8], False)
    assert await page(role="payer") == ([7, 6, 4, 3, 2], False)
    assert await page("pending", "payer") == ([3], False)
    assert await page(user_id=2) == ([8, 6, 4, 2], False)
    assert await page(user_id=3, status="expired") == ([7], False)
    # Before hold 4 expires it is pending, and hold 7 too unless its expiry is on record.
    assert (await page("pending", now_us=T0 + SECOND))[0] == [8, 4, 3]
    # Keyset pages, one hold at a time, never skip or repeat one.
    for status_filter in (None, *STATUSES):
        seen: list[int] = []
        before: int | None = None
        while True:
            ids, more = await page(status_filter, before_id=before, limit=1)
            seen += ids
            if not more:
                break
            before = ids[-1]
        assert seen == (await page(status_filter))[0], status_filter
    assert await page(limit=4) == ([8, 7, 6, 4], True)
    assert await page(before_id=4, limit=2) == ([3, 2], False)
    assert await page(before_id=2) == ([], False)

    async def hold(hold_id: int) -> Hold | None:
        return await read_hold(redis_client, db_engine, hold_id, BUCKET, tail_max_entries=TAIL)

    captured = await hold(2)
    assert captured is not None
    assert (captured.status, captured.captured_amount_kopecks, captured.capture_txn_id) == (
        "captured",
        600,
        9,
    )
    for hold_id, status in EXPECTED_AT_NOW.items():
        found = await hold(hold_id)
        assert found is not None
        assert found.status_at(NOW) == status, hold_id
    pending = await hold(8)
    assert pending == Hold(8, 2, 1, 6_000, "pending", 0, T0 + 8, LONG, None)
    for missing in (0, 1, 5, 9, 10, 999):
        assert await hold(missing) is None, missing


async def test_read_hold_takes_the_redis_hash_first(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store
) -> None:
    _, records = hold_story()
    await store(records, len(records))
    fields = {
        "from": "1",
        "to": "3",
        "amount": "2000",
        "status": "captured",
        "captured_amount": "1500",
        "created_at_us": str(T0 + 2),
        "expires_at_us": str(LONG),
        "capture_txn_id": "77",
    }
    await redis_client.hset(keyspace.hold(BUCKET, 3), mapping=fields)  # type: ignore[arg-type]
    found = await read_hold(redis_client, db_engine, 3, BUCKET, tail_max_entries=TAIL)
    assert found == Hold(3, 1, 3, 2_000, "captured", 1_500, T0 + 2, LONG, 77)


async def test_read_hold_of_an_ended_hold_needs_no_tail(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store
) -> None:
    _, records = hold_story()
    await store(records, len(records))
    await append(redis_client, *[Book(100).deposit(1, 1, T0 + 100) for _ in range(5)])
    found = await read_hold(redis_client, db_engine, 6, BUCKET, tail_max_entries=2)
    assert found is not None
    assert found.status == "voided"
    with pytest.raises(HistoryUnavailable):
        await read_hold(
            redis_client, db_engine, 3, BUCKET, tail_max_entries=2
        )  # pending: maybe not
    with pytest.raises(HistoryUnavailable):
        await list_holds(
            redis_client,
            db_engine,
            user_id=1,
            status=None,
            role=None,
            before=None,
            limit=10,
            now_us=NOW,
            tail_max_entries=2,
        )


@pytest.mark.parametrize("seed", range(6))
async def test_list_holds_against_a_model(
    redis_client: RedisClient, db_engine: AsyncEngine, store: Store, seed: int
) -> None:
    """Random holds among three users, some ended (captured, voided, expired on record),
    some past their expiry, the records split anywhere between ledger and tail; every
    filter and page size gives exactly the model's answer."""
    rng = random.Random(seed)
    book = Book()
    records = [book.deposit(user, 10**9, T0) for user in (1, 2, 3)]
    status_of: dict[int, Status] = {}
    parties: dict[int, tuple[int, int]] = {}
    open_holds: list[int] = []
    at = T0 + 1
    for _ in range(60):
        at += 1
        if open_holds and rng.random() < 0.4:
            hold_id = open_holds.pop(rng.randrange(len(open_holds)))
            choice: Status = rng.choice(["captured", "voided", "expired"])
            if choice == "captured":
                amount = int(book.holds[hold_id]["amount"])
                records.append(book.capture(hold_id, rng.randint(1, amount), at))
            else:
                records.append(book.end(f"hold_{choice}", hold_id, at))
            status_of[hold_id] = choice
        else:
            payer, payee = rng.sample([1, 2, 3], 2)
            # Instants that do not follow the ids (as across buckets, where each bucket
            # issues its own epoch's), ties included: a list is by instant, then id.
            made = at + rng.choice([-40, 0, 0, 40])
            expires = made + rng.choice([5 * SECOND, 1_000 * SECOND])
            records.append(book.hold(payer, payee, rng.randint(1, 1_000), made, expires))
            hold_id = int(records[-1]["hold"])
            open_holds.append(hold_id)
            parties[hold_id] = (payer, payee)
            status_of[hold_id] = "expired" if expires <= NOW else "pending"
    await store(records, rng.randint(0, len(records)))

    for user_id in (1, 2, 3):
        for role in (None, "payer", "payee"):
            for status in (None, *STATUSES):
                expected = sorted(
                    (
                        hold_id
                        for hold_id, (payer, payee) in parties.items()
                        if (status is None or status_of[hold_id] == status)
                        and (
                            (role != "payee" and payer == user_id)
                            or (role != "payer" and payee == user_id)
                        )
                    ),
                    key=lambda hold_id: (int(book.holds[hold_id]["created_at_us"]), hold_id),
                    reverse=True,
                )
                limit = rng.choice([1, 3, 7, 100])
                seen: list[int] = []
                before: tuple[int, int] | None = None
                while True:
                    result = await list_holds(
                        redis_client,
                        db_engine,
                        user_id=user_id,
                        status=status,
                        role=role,
                        before=before,
                        limit=limit,
                        now_us=NOW,
                        tail_max_entries=TAIL,
                    )
                    assert len(result.holds) <= limit
                    seen += [hold.hold_id for hold in result.holds]
                    if not result.has_more:
                        break
                    before = (result.holds[-1].created_at_us, result.holds[-1].hold_id)
                assert seen == expected, (user_id, role, status, limit)
