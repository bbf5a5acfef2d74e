"""Every Redis key the service uses, in one place.

A user's keys share the hash tag ``{<user_id>}`` so that the keys of one user land in
one Redis Cluster slot. The Lua scripts check that the keys they are given have exactly
these shapes.
"""

TXN_SEQ = "txn:seq"
TXN_STREAM = "txn:stream"
# Records the writer could not store, with the reason (lua/dead_letter.lua).
TXN_DEAD_LETTER = "txn:dead-letter"
WRITER_GROUP = "ledger-writer"

# aiohttp-session's RedisStorage names a session ``<cookie name>_<id>``;
# lua/includes/check_session.lua checks this shape.
SESSION_COOKIE = "wallet_session"


def user(user_id: int) -> str:
    return f"user:{{{user_id}}}"


def idempotency(user_id: int, key: str) -> str:
    return f"idem:{{{user_id}}}:{key}"


def request_outcome(user_id: int, token: str) -> str:
    """What became of one money request: lua/includes/request_outcome.lua."""
    return f"req:{{{user_id}}}:{token}"


def session(session_id: str) -> str:
    return f"{SESSION_COOKIE}_{session_id}"


def login_failures_of_user(username: str) -> str:
    """Usernames are unique regardless of case: one counter for every spelling."""
    return f"login-fail:user:{username.lower()}"


def login_failures_of_address(address: str) -> str:
    return f"login-fail:addr:{address}"
