"""All configuration in one typed object, read from the environment."""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.domain.limits import MAX_BUCKETS

ENV_PREFIX = "WALLET_"

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEME = "redis+cluster"
# What a Sentinel deployment may name its primary here: Sentinel itself takes any name
# without blanks; these are the ones that need no quoting in a URL.
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_SENTINELS = 32
# Seed nodes of a cluster: the client asks them for the slot map, and learns every other
# node from it; a few suffice.
_MAX_CLUSTER_SEEDS = 32


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """``redis+sentinel://host:port[,host:port...]/<service name>[/db]``: the Sentinels to
    ask where the primary of ``service_name`` is, and the database to use there."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int


def sentinel_url(url: str) -> SentinelUrl | None:
    """The Sentinel deployment a REDIS_URL names; None for any other scheme (a standalone
    Redis, read by redis-py). Raises ValueError, naming what is wrong, for a malformed one."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError(
            f"{SENTINEL_SCHEME}: give host:port[,host:port...]/<service name>[/db];"
            " credentials, query and fragment are not supported"
        )
    sentinels = _addresses(parts.netloc, SENTINEL_SCHEME, _MAX_SENTINELS, "Sentinels")
    path = parts.path.removeprefix("/").split("/")
    if not 1 <= len(path) <= 2 or _SERVICE_NAME.fullmatch(path[0]) is None:
        raise ValueError(
            f"{SENTINEL_SCHEME}: the path is /<service name>[/db], the name 1-64 of"
            " A-Z a-z 0-9 . _ -"
        )
    db = path[1] if len(path) == 2 else "0"
    if not db.isdigit() or int(db) > 10_000:
        raise ValueError(f"{SENTINEL_SCHEME}: the database is a number, got {db!r}")
    return SentinelUrl(sentinels, path[0], int(db))


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """``redis+cluster://host:port[,host:port...]``: nodes of a Redis/Valkey Cluster to ask
    for its slot map (a cluster has database 0 alone)."""

    seeds: tuple[tuple[str, int], ...]


def cluster_url(url: str) -> ClusterUrl | None:
    """The cluster a REDIS_URL names; None for any other scheme. Raises ValueError, naming
    what is wrong, for a malformed one."""
    parts = urlsplit(url)
    if parts.scheme != CLUSTER_SCHEME:
        return None
    if "@" in parts.netloc or parts.query or parts.fragment or parts.path:
        raise ValueError(
            f"{CLUSTER_SCHEME}: give host:port[,host:port...] alone; credentials, a path (a"
            " cluster has database 0 alone), query and fragment are not supported"
        )
    return ClusterUrl(_addresses(parts.netloc, CLUSTER_SCHEME, _MAX_CLUSTER_SEEDS, "seed nodes"))


def _addresses(netloc: str, scheme: str, limit: int, what: str) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]``, at most ``limit`` of them."""
    addresses = tuple(_host_port(address, scheme) for address in netloc.split(","))
    if len(addresses) > limit:
        raise ValueError(f"{scheme}: at most {limit} {what}")
    return addresses


def _host_port(address: str, scheme: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address is given in brackets
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{scheme}: {address!r} is not host:port")
    return host, int(port)


class Settings(BaseSettings):
    """``REDIS_URL`` and ``DATABASE_URL`` by those names; everything else as ``WALLET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, populate_by_name=True, extra="forbid")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    database_url: str = Field(
        default="postgresql+asyncpg://127.0.0.1:5432/wallet", validation_alias="DATABASE_URL"
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # The buckets money keys are spread over (service/redis/keyspace.py), fixed when the
    # deployment is created (service/ledger/bucket_count.py): one is all a single Redis
    # needs; a cluster spreads money over its primaries only with more (docs/scaling.md).
    buckets: int = Field(default=1, ge=1, le=MAX_BUCKETS)
    # Starting on a Redis whose maxmemory-policy may evict keys (and so balances).
    allow_evicting_redis: bool = False
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_wait_timeout_ms: int = Field(default=5_000, ge=1, le=60_000)
    # A Redis that does not answer within this is an outage. Commands are never retried: a
    # money request whose reply did not come asks Redis what became of it instead.
    redis_socket_timeout_ms: int = Field(default=5_000, ge=100, le=60_000)
    # Auto-pipelining (service/redis/pipelining.py): script calls of one turn of the event
    # loop go out together, at most this many per batch and this many batches at once.
    redis_pipeline_max_calls: int = Field(default=128, ge=1, le=10_000)
    redis_pipeline_max_batches: int = Field(default=2, ge=1, le=1_000)
    # A money request is answered only once its writes are on this many replicas (WAIT and
    # WAITAOF, or WAIT alone where the server has no WAITAOF), asked once per pipelined
    # batch; replicas that do not confirm within redis_replica_wait_ms (each command) make
    # it 503 outcome_unknown (service/redis/replicas.py, docs/reliability.md). A replica
    # that misses an acknowledgement reports again a second later: the default outlasts
    # that.
    redis_min_replicas: int = Field(default=0, ge=0, le=100)
    redis_replica_wait_ms: int = Field(default=1_500, ge=10, le=60_000)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60, le=10_000_000)
    # Transfers answered 404 recipient_not_found per user, per fixed window; past it the
    # user's transfers are 429 until the window ends, so ids and names cannot be probed.
    recipient_not_found_max_per_user: int = Field(default=20, ge=1, le=1_000_000)
    recipient_not_found_window_s: int = Field(default=60 * 60, ge=1, le=24 * 3600)

    # The proxies whose X-Forwarded-For is believed (service/http/client_address.py): IPs
    # or CIDRs, comma-separated. Empty: the client address is always the TCP peer.
    trusted_proxies: Annotated[tuple[IPvAnyNetwork, ...], NoDecode] = Field(
        default=(), max_length=1_000
    )

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
    # Sessions one user may hold at once; a login beyond it ends the user's oldest session.
    # lua/start_session.lua refuses more than 1000.
    session_max_per_user: int = Field(default=20, ge=1, le=1_000)

    # Login throttling (service/auth/login_throttle.py; README, "Login throttling"). Each
    # count lives for the window from its first attempt.
    login_failure_window_s: int = Field(default=15 * 60, ge=1, le=24 * 3600)
    # One username from one address: this many failures are free, then each one makes the
    # next attempt wait, from delay_base_ms doubling up to delay_max_ms; at the maximum the
    # pair is refused until its window ends.
    login_failures_before_delay: int = Field(default=3, ge=0, le=1_000)
    login_delay_base_ms: int = Field(default=1_000, ge=1, le=3_600_000)
    login_delay_max_ms: int = Field(default=60_000, ge=1, le=3_600_000)
    login_max_failures_per_username_and_address: int = Field(default=10, ge=1, le=1_000)
    # One address, across usernames (password spraying): refused until its window ends.
    login_max_failures_per_address: int = Field(default=100, ge=1, le=100_000)
    # One username from this many addresses within a window is an attack: its logins are
    # refused for everyone for attack_lock_s, and then it cannot be locked again for
    # attack_cooldown_s, so an attacker cannot keep a user out.
    login_attack_addresses: int = Field(default=10, ge=2, le=10_000)
    login_attack_lock_s: int = Field(default=5 * 60, ge=1, le=24 * 3600)
    login_attack_cooldown_s: int = Field(default=60 * 60, ge=0, le=7 * 24 * 3600)

    # Sign-ups per client address (counted whatever their answer), per fixed window.
    sign_up_max_per_address: int = Field(default=20, ge=1, le=1_000_000)
    sign_up_window_s: int = Field(default=60 * 60, ge=1, le=24 * 3600)
    # argon2id cost; the defaults are argon2-cffi's (RFC 9106 low-memory profile).
    argon2_time_cost: int = Field(default=3, ge=1, le=10)
    argon2_memory_kib: int = Field(default=65_536, ge=1_024, le=1_048_576)
    # Per process: hashes at once (each holds argon2_memory_kib) and hashes waiting, for
    # logins and, apart, for new passwords (sign-up): a flood of sign-ups cannot take the
    # threads or the queue that logins use.
    login_hash_max_concurrent: int = Field(default=2, ge=1, le=64)
    login_hash_max_queued: int = Field(default=32, ge=0, le=10_000)
    sign_up_hash_max_concurrent: int = Field(default=1, ge=1, le=64)
    sign_up_hash_max_queued: int = Field(default=8, ge=0, le=10_000)

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
    # Holds: Redis keeps a hold that is no longer pending this long (GET and repeated captures
    # and voids read it there; past it, from the ledger).
    hold_retention_s: int = Field(default=7 * 24 * 3600, ge=60, le=90 * 24 * 3600)
    # The sweeper (part of `wallet writer`) looks for expired holds this often, and marks at
    # most this many per pass.
    hold_sweep_interval_ms: int = Field(default=1_000, ge=10, le=60_000)
    hold_sweep_batch: int = Field(default=100, ge=1, le=10_000)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        # "10.0.0.0/8, 192.0.2.7" in the environment; a JSON list would be easy to get wrong.
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    # HTTP serving, per process. A request body must be in within this many seconds of the
    # server starting to read it, else 408: a client that trickles its body holds a
    # connection no longer.
    request_body_timeout_s: float = Field(default=10.0, ge=1.0, le=60.0)
    # A connection whose request headers are not all in, or that sits idle between two
    # requests, is closed after this (aiohttp's keep-alive timer, which starts as the
    # connection opens and is not reset by a trickle of bytes).
    keepalive_timeout_s: float = Field(default=15.0, ge=1.0, le=300.0)
    # Connections open at once per process; one more is answered 503 and closed. Each is a
    # file descriptor: keep it under the open-file limit (ulimit -n) less the pools.
    max_connections: int = Field(default=1_000, ge=1, le=100_000)
    # host:port of GET /metrics, a listener of its own: never on the API's address.
    metrics_listen: str = "127.0.0.1:9464"
    # host:port of `wallet writer`'s own GET /metrics and GET /healthz; two writers on one
    # host need two addresses.
    writer_metrics_listen: str = "127.0.0.1:9465"

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("metrics_listen", "writer_metrics_listen")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError("give host:port, e.g. 127.0.0.1:9464")
        return value

    @property
    def metrics_address(self) -> tuple[str, int]:
        """(host, port) of WALLET_METRICS_LISTEN; an IPv6 host may be given in brackets."""
        return _address(self.metrics_listen)

    @property
    def writer_metrics_address(self) -> tuple[str, int]:
        """(host, port) of WALLET_WRITER_METRICS_LISTEN."""
        return _address(self.writer_metrics_listen)

    @field_validator("redis_url")
    @classmethod
    def _known_deployment(cls, value: str) -> str:
        # A malformed redis+sentinel:// or redis+cluster:// URL is refused here, at start.
        sentinel_url(value)
        cluster_url(value)
        return value

    @model_validator(mode="after")
    def _replica_wait_within_the_batch_deadline(self) -> "Settings":
        """The replicas' confirmation (WAIT, then WAITAOF: up to twice the wait) is read
        within the batch's one deadline (the socket timeout): a longer wait would be cut
        off by it, its batch's replies lost."""
        longest_wait_ms = 2 * self.redis_replica_wait_ms
        if self.redis_min_replicas and longest_wait_ms >= self.redis_socket_timeout_ms:
            raise ValueError(
                f"WALLET_REDIS_REPLICA_WAIT_MS ({self.redis_replica_wait_ms}) must be less than"
                " half WALLET_REDIS_SOCKET_TIMEOUT_MS"
                f" ({self.redis_socket_timeout_ms}): WAIT and WAITAOF wait that long each"
            )
        return self

    @model_validator(mode="after")
    def _asking_shares_a_batch_with_its_call(self) -> "Settings":
        """On a cluster, ASKING and the call it lets through go out as one batch of two
        (service/redis/cluster.py): in two batches they could take two connections."""
        if cluster_url(self.redis_url) is not None and self.redis_pipeline_max_calls < 2:
            raise ValueError(
                "WALLET_REDIS_PIPELINE_MAX_CALLS must be at least 2 on a cluster: ASKING and"
                " its call go out in one batch"
            )
        return self

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


def _address(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def env_name(field: str) -> str:
    """The environment variable that sets a field (or an alias: REDIS_URL, DATABASE_URL)."""
    info = Settings.model_fields.get(field)
    if info is None:
        return field
    if isinstance(info.validation_alias, str):
        return info.validation_alias
    return f"{ENV_PREFIX}{field.upper()}"


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The WALLET_* variables that set nothing. pydantic-settings ignores them, so a typo
    (WALLET_COOKIE_SECUR=true) would leave the default in force without a word."""
    known = {env_name(field).upper() for field in Settings.model_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known
    )
