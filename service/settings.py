"""All configuration in one typed object, read from the environment."""

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``REDIS_URL`` and ``DATABASE_URL`` by those names; everything else as ``WALLET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="WALLET_", populate_by_name=True, extra="forbid")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    database_url: str = Field(
        default="postgresql+asyncpg://127.0.0.1:5432/wallet", validation_alias="DATABASE_URL"
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # Starting on a Redis whose maxmemory-policy may evict keys (and so balances).
    allow_evicting_redis: bool = False
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_wait_timeout_ms: int = Field(default=5_000, ge=1, le=60_000)
    # A Redis that does not answer within this is an outage. Commands are never retried: a
    # money request whose reply did not come asks Redis what became of it instead.
    redis_socket_timeout_ms: int = Field(default=5_000, ge=100, le=60_000)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60, le=10_000_000)
    # A money request whose reply is lost after it was sent (a timeout, a dropped
    # connection) may have been applied: its handler asks Redis what became of it, for at
    # most this long, before it answers 503 outcome_unknown.
    request_outcome_wait_ms: int = Field(default=10_000, ge=100, le=120_000)
    # How long Redis keeps the outcome of a money request that moved money, under the
    # request's token, for that question (memory: about 200 bytes per transaction of the
    # last request_outcome_ttl_s seconds). Longer than the wait and the socket timeout
    # together: see _outcome_outlives_the_wait.
    request_outcome_ttl_s: int = Field(default=60, ge=10, le=3_600)

    # Sessions: the cookie holds only a random id; the data lives in Redis.
    cookie_secure: bool = False
    session_idle_timeout_s: int = Field(default=30 * 60, ge=60, le=30 * 24 * 3600)
    session_absolute_timeout_s: int = Field(default=12 * 3600, ge=60, le=90 * 24 * 3600)
    login_max_failures: int = Field(default=10, ge=1, le=1_000)
    login_max_failures_per_address: int = Field(default=100, ge=1, le=100_000)
    login_failure_window_s: int = Field(default=15 * 60, ge=1, le=24 * 3600)
    # argon2id cost; the defaults are argon2-cffi's (RFC 9106 low-memory profile).
    argon2_time_cost: int = Field(default=3, ge=1, le=10)
    argon2_memory_kib: int = Field(default=65_536, ge=1_024, le=1_048_576)
    # Per process: hashes at once (each holds argon2_memory_kib) and hashes waiting.
    password_hash_max_concurrent: int = Field(default=2, ge=1, le=64)
    password_hash_max_queued: int = Field(default=32, ge=0, le=10_000)

    # The stream writer (persistence/writer.py).
    writer_batch_size: int = Field(default=500, ge=1, le=10_000)
    writer_block_ms: int = Field(default=1_000, ge=1, le=60_000)
    # Pending entries idle this long belong to a dead writer and are claimed; well under
    # the contract's 10 s for a restarted writer (under another name) to resume.
    writer_claim_idle_ms: int = Field(default=5_000, ge=1_000, le=3_600_000)
    writer_retry_max_backoff_ms: int = Field(default=5_000, ge=10, le=300_000)
    # "" means <hostname>-<pid>.
    writer_consumer_name: str = Field(default="", max_length=64)
    # Stream entries are kept this long after they are persisted, for `wallet replay`.
    stream_retention_s: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)
    # Read-your-writes merges at most this many not-yet-persisted entries into a history read.
    history_tail_max_entries: int = Field(default=20_000, ge=100, le=1_000_000)

    @model_validator(mode="after")
    def _outcome_outlives_the_wait(self) -> "Settings":
        """A request's outcome is asked for at most socket timeout + wait after the request
        was sent, so it must be kept at least that long after the script ran."""
        longest_ask_ms = self.redis_socket_timeout_ms + self.request_outcome_wait_ms
        if self.request_outcome_ttl_s * 1000 <= longest_ask_ms:
            raise ValueError(
                f"WALLET_REQUEST_OUTCOME_TTL_S ({self.request_outcome_ttl_s} s) must be longer"
                " than WALLET_REDIS_SOCKET_TIMEOUT_MS + WALLET_REQUEST_OUTCOME_WAIT_MS"
                f" ({longest_ask_ms} ms)"
            )
        return self


def env_name(field: str) -> str:
    """The environment variable that sets a field (or an alias: REDIS_URL, DATABASE_URL)."""
    info = Settings.model_fields.get(field)
    if info is None:
        return field
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"WALLET_{field.upper()}"
