"""Login throttling: failures count per username and client address, per address, and,
for an attack from many addresses at once, per username. The policy and its numbers are in
README ("Login throttling"); each number is a setting.

Every attempt is counted against the limits before its password is checked, so that
attempts in flight at once cannot slip past one, and given back when it succeeds (or was
never checked). Only a failure, once known, makes the client wait before its next try, so
logins in flight at once are not slowed for each other.

The address's count and the username's are in different Redis Cluster slots, so each step
is two Lua scripts, one per slot, never one touching both: the address's first, then the
username's, told the address's answer (lua/login_address_attempt.lua says why this is as
safe as one script). An attempt checks its password only when both counted it, and a
refused one holds neither count.
"""

import asyncio
import math

from service.domain import refusals
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings

# login_address_give_back.lua's ARGV[1]: whether the attempt was refused (and must leave no
# key), or let in (its password checked, or not).
REFUSED, LET_IN = 1, 0


def _user_keys(username: str, address: str) -> list[str]:
    return [
        keyspace.login_failures_of_user_at_address(username, address),
        keyspace.login_failing_addresses_of_user(username),
    ]


class LoginThrottle:
    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        window_ms = settings.login_failure_window_s * 1000
        self._address_limits = [window_ms, settings.login_max_failures_per_address]
        self._user_limits = [
            window_ms,
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
        self._address_attempt = LuaScript(redis, "login_address_attempt")
        self._address_give_back = LuaScript(redis, "login_address_give_back")
        self._attempt = LuaScript(redis, "login_attempt")
        self._failed = LuaScript(redis, "login_failed")
        self._succeeded = LuaScript(redis, "login_succeeded")
        self._refund = LuaScript(redis, "refund_login_attempt")

    async def begin(self, username: str, address: str) -> None:
        """Lets the attempt check its password, counted against the limits until it
        succeeds; else refuses it with 429 and the time to wait."""
        address_key = [keyspace.login_failures_of_address(address)]
        address_wait_ms = int(
            await self._address_attempt(keys=address_key, args=self._address_limits)
        )
        keys = [*_user_keys(username, address), keyspace.login_lock_of_user(username)]
        try:
            wait_ms = int(
                await self._attempt(keys=keys, args=[address, address_wait_ms, *self._user_limits])
            )
            if wait_ms > 0:
                raise Refused(refusals.TOO_MANY_ATTEMPTS, retry_after_s=math.ceil(wait_ms / 1000))
        # Refused, Redis failed, or the request was cancelled: the address gives back what
        # it let in (else the count would stay taken for the whole window).
        except BaseException:
            if address_wait_ms == 0:
                await self._address_give_back(keys=address_key, args=[REFUSED])
            raise

    async def failed(self, username: str, address: str) -> None:
        """The password was wrong: past the free failures, the next try must wait. The
        address keeps its count: a failure."""
        key = keyspace.login_failures_of_user_at_address(username, address)
        await self._failed(keys=[key], args=self._delays)

    async def succeeded(self, username: str, address: str) -> None:
        """A success is no failure: the address gets its attempt back, and the username
        starts over at this address."""
        await asyncio.gather(
            self._address_give_back(
                keys=[keyspace.login_failures_of_address(address)], args=[LET_IN]
            ),
            self._succeeded(keys=_user_keys(username, address), args=[address]),
        )

    async def not_checked(self, username: str, address: str) -> None:
        """The password was never checked: the attempt is given back."""
        await asyncio.gather(
            self._address_give_back(
                keys=[keyspace.login_failures_of_address(address)], args=[LET_IN]
            ),
            self._refund(keys=_user_keys(username, address), args=[address]),
        )
