"""Every Redis key the service uses, in one place.

A user's keys share the hash tag ``{<user_id>}`` so that the keys of one user land in
one Redis Cluster slot. The Lua scripts check that the keys they are given have exactly
these shapes.
"""

TXN_SEQ = "txn:seq"
# Sentinel deployments (lua/follow_primary.lua): the replication id of the primary the
# counter was last used on, and a counter set aside when the primary changed, until the
# writer starts it again in a new epoch (lua/restart_counter.lua).
TXN_SEQ_PRIMARY = "txn:seq:primary"
TXN_SEQ_BEHIND = "txn:seq:behind"
TXN_STREAM = "txn:stream"
# Records the writer could not store, with the reason (lua/dead_letter.lua).
TXN_DEAD_LETTER = "txn:dead-letter"
WRITER_GROUP = "ledger-writer"
# String, short TTL: with WALLET_REDIS_MIN_REPLICAS, written by the writer right before it
# waits for the replicas (service/ledger/writer.py). The wait covers only what its own
# connection wrote, and a read of pending entries writes nothing: this write makes the wait
# cover every entry read.
WRITER_WAIT = "txn:writer-wait"

# aiohttp-session's RedisStorage names a session ``<cookie name>_<id>``;
# lua/includes/check_session.lua checks this shape.
SESSION_COOKIE = "wallet_session"


def user(user_id: int) -> str:
    return f"user:{{{user_id}}}"


def pending_holds(user_id: int) -> str:
    """Sorted set: the holds whose payer is ``user_id`` and whose money the payer's
    ``held_kopecks`` still counts; member ``<hold_id>:<to_user_id>:<amount_kopecks>``,
    score ``expires_at_us`` (lua/includes/holds.lua)."""
    return f"holds:{{{user_id}}}"


def hold(hold_id: int) -> str:
    """Hash: one hold (lua/hold_create.lua). Not tagged with a user: the payee acts on it
    knowing only its id. lua/hold_create.lua builds this name itself, from the id it assigns."""
    return f"hold:{hold_id}"


# Sorted set: the holds whose payee's ``incoming_kopecks`` still counts them (pending, or
# expired and not yet swept); member ``<hold_id>:<from_user_id>:<to_user_id>:<amount>``
# (the sweeper settles a hold from it alone), score ``expires_at_us``. The sweeper reads it
# (service/ledger/hold_sweeper.py, lua/hold_expire.lua).
HOLDS_DUE = "holds:due"


def refunded(user_id: int, txn_id: int) -> str:
    """String: kopecks refunded so far of transfer ``txn_id``, received by ``user_id``."""
    return f"refunded:{{{user_id}}}:{txn_id}"


def idempotency(user_id: int, key: str) -> str:
    return f"idem:{{{user_id}}}:{key}"


def request_outcome(user_id: int, token: str) -> str:
    """What became of one money request: lua/includes/request_outcome.lua."""
    return f"req:{{{user_id}}}:{token}"


def session(session_id: str) -> str:
    return f"{SESSION_COOKIE}_{session_id}"


def sessions_of_user(user_id: int) -> str:
    """A user's session ids, scored by login time in µs: what lua/end_sessions.lua ends at once.
    lua/start_session.lua and lua/end_sessions.lua check this shape."""
    return f"sessions:{{{user_id}}}"


# Throttling (service/auth/): counts of attempts, never data. A username is lowered (names
# are unique regardless of case: one count for every spelling); an address is an IP as
# service/http/client_address.py spells it. A username has no ":", so the keys of one
# username and address cannot be read as another's.


def login_failures_of_address(address: str) -> str:
    return f"throttle:login:addr:{address}"


def login_failures_of_user_at_address(username: str, address: str) -> str:
    return f"throttle:login:user:{username.lower()}:addr:{address}"


def login_failing_addresses_of_user(username: str) -> str:
    return f"throttle:login:user:{username.lower()}:addrs"


def login_lock_of_user(username: str) -> str:
    return f"throttle:login:user:{username.lower()}:lock"


def sign_ups_of_address(address: str) -> str:
    return f"throttle:sign-up:addr:{address}"


def recipient_misses_of_user(user_id: int) -> str:
    return f"throttle:recipient-misses:{{{user_id}}}"
