"""Every Redis key the service uses, in one place.

Money keys live in buckets (the contract's "Deployments", docs/scaling.md): every key of a
bucket carries its hash tag ``{b<bucket>}``, so a bucket is one Redis Cluster slot and a
script may touch any of its keys. A user's keys are all in the user's bucket; each bucket
has its own transaction id counter, stream, dead letters and due holds. The count of
buckets (``BUCKETS``, WALLET_BUCKETS) is fixed when a deployment is created
(service/ledger/bucket_count.py); with one, every money key shares one slot, so a cluster
spreads the sessions and throttles but not the money. The Lua scripts check that every key
they are given carries the tag of their first.
"""

import re
from collections.abc import Iterator

from service.domain.limits import MAX_BUCKETS

# Set once as the process connects to Redis (use_buckets), from WALLET_BUCKETS.
BUCKETS = 1

WRITER_GROUP = "ledger-writer"

# The stream of a version before buckets: `wallet rebuild` refuses to run while it exists,
# for it may hold transactions that are in no ledger yet (CHANGELOG, upgrading).
LEGACY_TXN_STREAM = "txn:stream"

# aiohttp-session's cookie, whose value is a session id ``<bucket>.<token>``
# (service/auth/sessions.py); lua/includes/check_session.lua checks the key's shape.
SESSION_COOKIE = "wallet_session"


# String: the count of buckets the deployment was created with (service/ledger/bucket_count.py).
BUCKET_COUNT = "deployment:buckets"


def use_buckets(buckets: int) -> None:
    """The deployment's count of buckets, for every key built from now on in this process."""
    global BUCKETS
    assert 1 <= buckets <= MAX_BUCKETS, buckets
    BUCKETS = buckets


def bucket_of(user_id: int) -> int:
    # Not checked here: the scripts refuse a malformed id, and tests make keys of such ids.
    return user_id % BUCKETS


def same_bucket(user_id: int, other_user_id: int) -> bool:
    return bucket_of(user_id) == bucket_of(other_user_id)


def all_buckets() -> Iterator[int]:
    return iter(range(BUCKETS))


def _tag(bucket: int) -> str:
    assert 0 <= bucket < BUCKETS, bucket
    return f"{{b{bucket}}}"


def _user_tag(user_id: int) -> str:
    return f"{_tag(bucket_of(user_id))}:{user_id}"


# Per bucket.


def txn_seq(bucket: int) -> str:
    """String: the last transaction id the bucket issued, within its epoch."""
    return f"txn:seq:{_tag(bucket)}"


def txn_seq_primary(bucket: int) -> str:
    """Sentinel and cluster deployments (lua/follow_primary.lua): the replication id of the
    primary the counter was last used on."""
    return f"txn:seq:primary:{_tag(bucket)}"


def txn_seq_behind(bucket: int) -> str:
    """A counter set aside when the primary changed, until the writer starts it again in a
    new epoch (lua/restart_counter.lua)."""
    return f"txn:seq:behind:{_tag(bucket)}"


def txn_clock(bucket: int) -> str:
    """String: the last instant (microseconds since the epoch) the bucket stamped a money
    call with; every stamp is past it, so stamps increase with ids even when Redis's
    clock steps back (lua/includes/money_frame.lua)."""
    return f"txn:clock:{_tag(bucket)}"


def txn_stream(bucket: int) -> str:
    """Stream: one entry per transaction or hold event of the bucket."""
    return f"txn:stream:{_tag(bucket)}"


def txn_dead_letter(bucket: int) -> str:
    """Stream: records the writer could not store, with the reason (lua/dead_letter.lua)."""
    return f"txn:dead-letter:{_tag(bucket)}"


def writer_wait(bucket: int) -> str:
    """String, short TTL: with WALLET_REDIS_MIN_REPLICAS, written by the writer right before
    it waits for the replicas (service/ledger/writer.py). The wait covers only what its own
    connection wrote, and a read of pending entries writes nothing: this write makes the
    wait cover every entry read."""
    return f"txn:writer-wait:{_tag(bucket)}"


def holds_due(bucket: int) -> str:
    """Sorted set: the holds whose payee's ``incoming_kopecks`` still counts them (pending,
    or expired and not yet swept); member ``<hold_id>:<from_user_id>:<to_user_id>:<amount>``
    (the sweeper settles a hold from it alone), score ``expires_at_us``. The sweeper reads
    it (service/ledger/hold_sweeper.py, lua/hold_expire.lua)."""
    return f"holds:due:{_tag(bucket)}"


def hold(bucket: int, hold_id: int) -> str:
    """Hash: one hold (lua/hold_create.lua), in its payer's bucket. lua/hold_create.lua
    builds this name itself, from the id it assigns."""
    return f"hold:{_tag(bucket)}:{hold_id}"


# Transfers across buckets (docs/scaling.md, "Across buckets"): the reservation on the
# payer's bucket, the expectation (the fence) on the payee's.


def transit(bucket: int) -> str:
    """String: kopecks reserved in the bucket by transfers whose credit is in another."""
    return f"transit:{_tag(bucket)}"


def outbound(bucket: int, txn_id: int) -> str:
    """Hash: one reservation (lua/transfer.lua builds this name itself, from the id it
    assigns): state from to amount token created_at_us from_balance idem_key."""
    return f"outbound:{_tag(bucket)}:{txn_id}"


def outbound_due(bucket: int) -> str:
    """Sorted set: the reservations not yet settled or voided, member txn_id, score the
    deadline (µs) after which recovery completes or voids them."""
    return f"outbound:due:{_tag(bucket)}"


def inbound(to_user_id: int, token: str) -> str:
    """Hash: the expectation of a credit to ``to_user_id`` under the request's token, in the
    payee's bucket: state (expected, applied, aborted) amount txn_id created_at_us."""
    return f"inbound:{_user_tag(to_user_id)}:{token}"


def inbound_due(bucket: int) -> str:
    """Sorted set: the expectations not yet applied or aborted, member ``<to>:<token>``,
    score the deadline (µs) after which recovery aborts them."""
    return f"inbound:due:{_tag(bucket)}"


# Per user, in the user's bucket.


def user(user_id: int) -> str:
    return f"user:{_user_tag(user_id)}"


def pending_holds(user_id: int) -> str:
    """Sorted set: the holds whose payer is ``user_id`` and whose money the payer's
    ``held_kopecks`` still counts; member ``<hold_id>:<to_user_id>:<amount_kopecks>``,
    score ``expires_at_us`` (lua/includes/holds.lua)."""
    return f"holds:{_user_tag(user_id)}"


def refunded(user_id: int, txn_id: int) -> str:
    """String: kopecks refunded so far of transfer ``txn_id``, received by ``user_id``."""
    return f"refunded:{_user_tag(user_id)}:{txn_id}"


def idempotency(user_id: int, key: str) -> str:
    return f"idem:{_user_tag(user_id)}:{key}"


def request_outcome(user_id: int, token: str) -> str:
    """What became of one money request: lua/includes/request_outcome.lua."""
    return f"req:{_user_tag(user_id)}:{token}"


def recipient_misses_of_user(user_id: int) -> str:
    return f"throttle:recipient-misses:{_user_tag(user_id)}"


def sessions_of_user(user_id: int) -> str:
    """A user's session ids, scored by login time in µs: what lua/end_sessions.lua ends at once.
    lua/start_session.lua and lua/end_sessions.lua check this shape."""
    return f"sessions:{_user_tag(user_id)}"


def new_session_id(user_id: int, token: str) -> str:
    """The id of a new session of ``user_id``: its bucket, so that the session's key can be
    found from the cookie alone and shares the slot of the money scripts that check it."""
    return f"{bucket_of(user_id)}.{token}"


# The bucket without leading zeros: one spelling per key, as lua/includes/bucket.lua reads it.
_SESSION_ID = re.compile(r"(0|[1-9][0-9]{0,3})\.([A-Za-z0-9_-]{1,64})")


def session(session_id: str) -> str | None:
    """The key of a session, from its id (the cookie's value); None for an id no session
    can have. lua/includes/check_session.lua builds the same from an id."""
    match = _SESSION_ID.fullmatch(session_id)
    if match is None or int(match[1]) >= BUCKETS:
        return None
    bucket, token = match.groups()
    return f"{SESSION_COOKIE}:{_tag(int(bucket))}:{token}"


# Throttling (service/auth/): counts of attempts, never data. A username is lowered (names
# are unique regardless of case: one count for every spelling); an address is an IP as
# service/http/client_address.py spells it. A username has no ":" nor brace, so the keys of
# one username and address cannot be read as another's.
#
# Login throttling (service/auth/login_throttle.py): a username's keys share its hash tag
# ``{<lowered name>}``, so they are one Redis Cluster slot and one script may touch them
# all (lua/login_attempt.lua); an address's count has no tag, its own slot, and its own
# scripts (lua/login_address_attempt.lua). No script touches both.


def login_failures_of_address(address: str) -> str:
    """String: failures (and checks in flight) from the address, any username."""
    return f"throttle:login:addr:{address}"


def _login_user_prefix(username: str) -> str:
    return f"throttle:login:{{{username.lower()}}}"


def login_failures_of_user_at_address(username: str, address: str) -> str:
    """Hash: attempts, failures and next_at_ms of one username from one address."""
    return f"{_login_user_prefix(username)}:addr:{address}"


def login_failing_addresses_of_user(username: str) -> str:
    """Set: the addresses failing for the username."""
    return f"{_login_user_prefix(username)}:addrs"


def login_lock_of_user(username: str) -> str:
    """String: when the username's lock ends (unix ms); outlives it by the cooldown."""
    return f"{_login_user_prefix(username)}:lock"


def sign_ups_of_address(address: str) -> str:
    return f"throttle:sign-up:addr:{address}"
