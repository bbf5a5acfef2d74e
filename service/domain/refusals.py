"""The one catalog of refusals: every error the service answers with.

Each entry gives the contract's error code, its HTTP status, the default message,
whether a money script records it under an Idempotency-Key (so that a retry replays it)
and whether it says when to retry (Retry-After).
The Lua outcome parsing (service/redis/money.py), the HTTP error bodies
(service/http/errors.py) and the OpenAPI error descriptions (service/http/openapi.py) are
all read from here; nothing else spells a status code for an error.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    status: int
    message: str
    # A money script records this outcome under the request's Idempotency-Key.
    recorded: bool = False
    # What the Lua scripts return for it, when that is not ``code``: two script outcomes
    # share the code the API shows for a Redis that lost its data.
    lua_outcome: str | None = None
    # Retry-After, in seconds: only on refusals after which the very same request is safe
    # to send again and soon likely to succeed (nothing was done, the cause is passing).
    retry_after_s: int | None = None


class Refused(Exception):
    """A request refused: nothing changed. Raised anywhere, rendered by the HTTP layer."""

    def __init__(
        self,
        refusal: Refusal,
        message: str | None = None,
        field: str | None = None,
        *,
        retry_after_s: int | None = None,
        replayed: bool = False,
    ) -> None:
        if refusal.status == 429 and retry_after_s is None:
            # A client told "too many" is always told when to come back (Retry-After).
            raise ValueError(f"{refusal.code}: a 429 needs retry_after_s")
        super().__init__(message or refusal.message)
        self.refusal = refusal
        self.message = message or refusal.message
        self.field = field
        self.retry_after_s = refusal.retry_after_s if retry_after_s is None else retry_after_s
        self.replayed = replayed

    @property
    def code(self) -> str:
        return self.refusal.code


# Input.
MALFORMED_JSON = Refusal("malformed_json", 400, "the request body is not valid JSON")
VALIDATION_ERROR = Refusal("validation_error", 422, "the request is not valid")
PAYLOAD_TOO_LARGE = Refusal("payload_too_large", 413, "the request body is larger than 64 KiB")
UNSUPPORTED_MEDIA_TYPE = Refusal("unsupported_media_type", 415, "send the body as application/json")
REQUEST_TIMEOUT = Refusal("request_timeout", 408, "the request body did not arrive in time")
NOT_FOUND = Refusal("not_found", 404, "no such endpoint")
METHOD_NOT_ALLOWED = Refusal("method_not_allowed", 405, "method not allowed on this endpoint")

# Accounts and sessions.
UNAUTHORIZED = Refusal("unauthorized", 401, "log in first")
INVALID_CREDENTIALS = Refusal("invalid_credentials", 401, "wrong username or password")
USERNAME_TAKEN = Refusal("username_taken", 409, "this username is taken")
WEAK_PASSWORD = Refusal(
    "weak_password", 422, "this password is one of the most commonly used; choose another"
)
TOO_MANY_ATTEMPTS = Refusal("too_many_attempts", 429, "too many failed logins; try again later")
TOO_MANY_SIGN_UPS = Refusal(
    "too_many_attempts", 429, "too many sign-ups from this address; try again later"
)

# Probing for user ids or names: a 404 recipient_not_found counts.
TOO_MANY_UNKNOWN_RECIPIENTS = Refusal(
    "too_many_attempts",
    429,
    "too many transfers to unknown recipients; try again later",
    lua_outcome="too_many_unknown_recipients",
)

# Money: what the scripts answer.
RECIPIENT_NOT_FOUND = Refusal("recipient_not_found", 404, "no such recipient", recorded=True)
INSUFFICIENT_FUNDS = Refusal(
    "insufficient_funds", 409, "the balance is smaller than the amount", recorded=True
)
BALANCE_LIMIT_EXCEEDED = Refusal(
    "balance_limit_exceeded", 422, "the balance would exceed 10^15 kopecks", recorded=True
)
SELF_TRANSFER = Refusal("self_transfer", 422, "a transfer to oneself is not allowed")
# Holds, refunds: what the hold, capture, void and refund scripts answer besides the above.
# hold_not_found: no such hold, or the caller is not the party who may do this with it.
HOLD_NOT_FOUND = Refusal("hold_not_found", 404, "no such hold", recorded=True)
HOLD_NOT_PENDING = Refusal(
    "hold_not_pending", 409, "the hold was captured, voided or has expired", recorded=True
)
CAPTURE_EXCEEDS_HOLD = Refusal(
    "validation_error",
    422,
    "a capture is at most the held amount",
    lua_outcome="capture_exceeds_hold",
)
TOO_MANY_HOLDS = Refusal(
    "too_many_holds",
    409,
    "too many pending holds; capture, void or let some expire first",
    recorded=True,
)
TRANSACTION_NOT_FOUND = Refusal(
    "transaction_not_found", 404, "no such transfer received by you", recorded=True
)
REFUND_EXCEEDS_TRANSFER = Refusal(
    "refund_exceeds_transfer",
    422,
    "the refunds of a transfer cannot add up to more than it",
    recorded=True,
)
IDEMPOTENCY_KEY_REUSED = Refusal(
    "idempotency_key_reused", 422, "this Idempotency-Key was used with another request"
)
# Redis lost its data: a wallet is missing, or the id counter is (`wallet rebuild`).
ACCOUNT_NOT_FOUND = Refusal(
    "wallet_unavailable",
    503,
    "the wallet is being restored; try again later",
    lua_outcome="account_not_found",
)
NOT_REBUILT = Refusal(
    "wallet_unavailable",
    503,
    "balances are being restored; try again later",
    lua_outcome="not_rebuilt",
)
# The id counter reached the end of its epoch (service/domain/limits.py): `wallet rebuild`
# starts the next one.
EPOCH_EXHAUSTED = Refusal(
    "wallet_unavailable",
    503,
    "transaction ids are being renewed; try again later",
    lua_outcome="epoch_exhausted",
)

# Capacity and outages.
# Retry-After of a 503 that only needs a moment (an outage).
RETRY_SHORTLY_S = 1
SERVER_BUSY = Refusal("server_busy", 503, "too many sign-ups and logins at once; retry shortly")
TOO_MANY_CONNECTIONS = Refusal("server_busy", 503, "too many connections at once; retry shortly")
SERVICE_UNAVAILABLE = Refusal(
    "service_unavailable",
    503,
    "a backend is unavailable; try again shortly",
    retry_after_s=RETRY_SHORTLY_S,
)
# A money request whose reply from Redis was lost, and which Redis then said it had not
# applied (and now never will: lua/lookup_request.lua). A retry is safe.
REQUEST_NOT_APPLIED = Refusal(
    "service_unavailable",
    503,
    "a backend did not answer in time; nothing was done; try again shortly",
    lua_outcome="not_applied",
    retry_after_s=RETRY_SHORTLY_S,
)
# A transfer across buckets whose credit was fenced off before it landed (its reservation
# outlived the deadline: service/redis/crossing.py): the reservation was undone, and its
# Idempotency-Key forgotten. A retry is a new transfer.
TRANSFER_UNDONE = Refusal(
    "service_unavailable",
    503,
    "the transfer could not be completed in time and was undone; try again shortly",
    retry_after_s=RETRY_SHORTLY_S,
)
# A refund of all that is left across buckets that found more left than it expected on the
# payer's bucket, again and again (refunds of the transfer voided meanwhile:
# service/redis/refunds.py). Nothing was done; a retry is safe.
REFUND_CONTENDED = Refusal(
    "service_unavailable",
    503,
    "what is left to refund changed while the refund was made; nothing was done; try again shortly",
    lua_outcome="stale",
    retry_after_s=RETRY_SHORTLY_S,
)
# A money request whose reply from Redis was lost, and whose outcome Redis could not tell
# within the wait: it may have been applied, so no Retry-After (the contract's Guarantees).
OUTCOME_UNKNOWN = Refusal(
    "outcome_unknown",
    503,
    "the request may or may not have been applied; send it again with the same"
    " Idempotency-Key to get its outcome (without one, read the history first)",
)
STATEMENT_TOO_LARGE = Refusal(
    "statement_too_large",
    422,
    "the period holds more than 10000 transactions; ask for a shorter one",
)
HISTORY_UNAVAILABLE = Refusal(
    "history_unavailable", 503, "the ledger is catching up; try again shortly"
)
# A bug: whether a money request moved money is then unknown too, so a retry is safe only
# with the request's Idempotency-Key.
INTERNAL_ERROR = Refusal(
    "internal_error",
    500,
    "internal error; retry a money request only with its Idempotency-Key",
)
# Never sent: the client left before the answer. What such a request is counted and logged
# as (nginx's 499), so that a client's hang-up is not taken for a failure of ours.
CLIENT_CLOSED_REQUEST = Refusal(
    "client_closed_request", 499, "the client closed the connection before the answer"
)

# The session a money script checked is gone: a 401 like any other.
SESSION_ENDED = Refusal(
    "unauthorized", 401, "the session ended; log in again", lua_outcome="unauthorized"
)

# What the money scripts can answer, by the outcome string a script returns.
BY_LUA_OUTCOME: dict[str, Refusal] = {
    refusal.lua_outcome or refusal.code: refusal
    for refusal in (
        RECIPIENT_NOT_FOUND,
        TOO_MANY_UNKNOWN_RECIPIENTS,
        INSUFFICIENT_FUNDS,
        BALANCE_LIMIT_EXCEEDED,
        SELF_TRANSFER,
        HOLD_NOT_FOUND,
        HOLD_NOT_PENDING,
        CAPTURE_EXCEEDS_HOLD,
        TOO_MANY_HOLDS,
        TRANSACTION_NOT_FOUND,
        REFUND_EXCEEDS_TRANSFER,
        IDEMPOTENCY_KEY_REUSED,
        ACCOUNT_NOT_FOUND,
        NOT_REBUILT,
        EPOCH_EXHAUSTED,
        SESSION_ENDED,
        REQUEST_NOT_APPLIED,
        REFUND_CONTENDED,
    )
}

CATALOG: tuple[Refusal, ...] = (
    MALFORMED_JSON,
    VALIDATION_ERROR,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    REQUEST_TIMEOUT,
    NOT_FOUND,
    METHOD_NOT_ALLOWED,
    UNAUTHORIZED,
    INVALID_CREDENTIALS,
    USERNAME_TAKEN,
    WEAK_PASSWORD,
    TOO_MANY_ATTEMPTS,
    TOO_MANY_SIGN_UPS,
    SERVER_BUSY,
    TOO_MANY_CONNECTIONS,
    SERVICE_UNAVAILABLE,
    OUTCOME_UNKNOWN,
    HISTORY_UNAVAILABLE,
    STATEMENT_TOO_LARGE,
    INTERNAL_ERROR,
    CLIENT_CLOSED_REQUEST,
    *BY_LUA_OUTCOME.values(),
)
