"""Login throttling: failed logins per username and per client address, in fixed windows.

Every attempt is counted before its password is checked (so that concurrent attempts
cannot slip past the limit) and given back when it succeeds, so many users logging in
successfully from one address are never throttled. Once a username is locked, every
attempt for it gets 429 until its window ends, the right password included: otherwise
the lock would not stop guessing.
"""

from redis.asyncio import Redis

from service.redis import keyspace
from service.redis.scripts import LuaScript
from service.settings import Settings


class LoginThrottle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._window_s = settings.login_failure_window_s
        self._max_per_user = settings.login_max_failures
        self._max_per_address = settings.login_max_failures_per_address
        self._refund = LuaScript(redis, "refund_login_attempt")

    async def acquire(self, username: str, address: str) -> bool:
        """Counts this attempt as a failure before the password is checked, so that
        attempts in flight at once are counted too; False when it is over a limit."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in (
                keyspace.login_failures_of_user(username),
                keyspace.login_failures_of_address(address),
            ):
                pipe.incr(key)
                pipe.expire(key, self._window_s, nx=True)
            user_attempts, _, address_attempts, _ = await pipe.execute()
        return (
            int(user_attempts) <= self._max_per_user
            and int(address_attempts) <= self._max_per_address
        )

    async def succeeded(self, username: str, address: str) -> None:
        """A success is no failure: the username starts over, the address gets its
        attempt back."""
        await self._redis.delete(keyspace.login_failures_of_user(username))
        await self._refund(keys=[keyspace.login_failures_of_address(address)], args=[])

    async def not_checked(self, username: str, address: str) -> None:
        """The password was never checked (server busy): the attempt is given back."""
        for key in (
            keyspace.login_failures_of_user(username),
            keyspace.login_failures_of_address(address),
        ):
            await self._refund(keys=[key], args=[])
