"""Login throttling: failed logins per username and per client address, in fixed windows.

Only failures are counted, so many users logging in successfully from one address are
never throttled. Once a username is locked, every attempt for it gets 429 until its
window ends, the right password included: otherwise the lock would not stop guessing.
"""

from typing import cast

from redis.asyncio import Redis

from service.settings import Settings


def _user_key(username: str) -> str:
    return f"login-fail:user:{username.lower()}"


def _address_key(address: str) -> str:
    return f"login-fail:addr:{address}"


class LoginThrottle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._window_s = settings.login_failure_window_s
        self._max_per_user = settings.login_max_failures
        self._max_per_address = settings.login_max_failures_per_address

    async def is_locked(self, username: str, address: str) -> bool:
        user_failures, address_failures = cast(
            list[bytes | None],
            await self._redis.mget(_user_key(username), _address_key(address)),
        )
        return (
            int(user_failures or 0) >= self._max_per_user
            or int(address_failures or 0) >= self._max_per_address
        )

    async def record_failure(self, username: str, address: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in (_user_key(username), _address_key(address)):
                pipe.incr(key)
                pipe.expire(key, self._window_s, nx=True)
            await pipe.execute()

    async def clear(self, username: str) -> None:
        await self._redis.delete(_user_key(username))
