"""All configuration in one typed object, read from the environment."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``REDIS_URL`` and ``DATABASE_URL`` by those names; everything else as ``WALLET_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="WALLET_", populate_by_name=True, extra="forbid")

    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")
    database_url: str = Field(
        default="postgresql+asyncpg://127.0.0.1:5432/wallet", validation_alias="DATABASE_URL"
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_wait_timeout_ms: int = Field(default=5_000, ge=1, le=60_000)
    idempotency_ttl_s: int = Field(default=24 * 3600, ge=60, le=10_000_000)
