"""Login throttling: failures count per username and client address, per address, and,
for an attack from many addresses at once, per username. The policy and its numbers are in
README ("Login throttling"); each number is a setting.

Every attempt is counted against the limits before its password is checked, so that
attempts in flight at once cannot slip past one, and given back when it succeeds (or was
never checked). Only a failure, once known, makes the client wait before its next try, so
logins in flight at once are not slowed for each other. Each step is one Lua script: the
counts of one attempt change together or not at all.
"""

import math

from service.domain import refusals
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings


def _keys(username: str, address: str) -> list[str]:
    return [
        keyspace.login_failures_of_address(address),
        keyspace.login_failures_of_user_at_address(username, address),
        keyspace.login_failing_addresses_of_user(username),
    ]


class LoginThrottle:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        self._limits = [
            settings.login_failure_window_s * 1000,
            settings.login_max_failures_per_address,
            settings.login_max_failures_per_username_and_address,
            settings.login_attack_addresses,
            settings.login_attack_lock_s * 1000,
            settings.login_attack_cooldown_s * 1000,
        ]
        self._delays = [
            settings.login_failures_before_delay,
            settings.login_delay_base_ms,
            settings.login_delay_max_ms,
        ]
        self._attempt = LuaScript(redis, "login_attempt")
        self._failed = LuaScript(redis, "login_failed")
        self._succeeded = LuaScript(redis, "login_succeeded")
        self._refund = LuaScript(redis, "refund_login_attempt")

    async def begin(self, username: str, address: str) -> None:
        """Lets the attempt check its password, counted against the limits until it
        succeeds; else refuses it with 429 and the time to wait."""
        keys = [*_keys(username, address), keyspace.login_lock_of_user(username)]
        wait_ms = int(await self._attempt(keys=keys, args=[address, *self._limits]))
        if wait_ms > 0:
            raise Refused(refusals.TOO_MANY_ATTEMPTS, retry_after_s=math.ceil(wait_ms / 1000))

    async def failed(self, username: str, address: str) -> None:
        """The password was wrong: past the free failures, the next try must wait."""
        key = keyspace.login_failures_of_user_at_address(username, address)
        await self._failed(keys=[key], args=self._delays)

    async def succeeded(self, username: str, address: str) -> None:
        """A success is no failure: the address gets its attempt back, and the username
        starts over at this address."""
        await self._succeeded(keys=_keys(username, address), args=[address])

    async def not_checked(self, username: str, address: str) -> None:
        """The password was never checked: the attempt is given back."""
        await self._refund(keys=_keys(username, address), args=[address])
