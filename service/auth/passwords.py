"""argon2id password hashing, off the event loop (a hash costs tens of milliseconds of CPU).

Checking a password at login and hashing a new one (sign-up) each have their own threads
and their own queue, so a flood of sign-ups cannot starve logins.
"""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from service.domain import refusals
from service.domain.refusals import Refused
from service.settings import Settings

T = TypeVar("T")


# A refused hash is retried by the client after this long.
BUSY_RETRY_AFTER_S = 1


class HashingCapacity:
    """At most ``max_concurrent`` hashes run at once (each takes argon2_memory_kib of
    memory), on threads of their own, and at most ``max_queued`` wait; beyond that a
    request is refused at once (503 ``server_busy``) instead of waiting without bound."""

    def __init__(self, name: str, max_concurrent: int, max_queued: int) -> None:
        self._threads = ThreadPoolExecutor(max_concurrent, thread_name_prefix=f"argon2-{name}")
        self._max_in_flight = max_concurrent + max_queued
        self._in_flight = 0

    async def run(self, work: Callable[..., T], *args: str) -> T:
        if self._in_flight >= self._max_in_flight:
            raise Refused(refusals.SERVER_BUSY, retry_after_s=BUSY_RETRY_AFTER_S)
        self._in_flight += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, work, *args)
        finally:
            self._in_flight -= 1

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib
        )
        # Verified against when the username is unknown, so both failures cost the same time.
        self._dummy_hash = self._hasher.hash("not a password of anyone")
        self._login = HashingCapacity(
            "login", settings.login_hash_max_concurrent, settings.login_hash_max_queued
        )
        self._new_passwords = HashingCapacity(
            "sign-up", settings.sign_up_hash_max_concurrent, settings.sign_up_hash_max_queued
        )

    async def hash(self, password: str) -> str:
        """A new password's hash, on the sign-up capacity."""
        return await self._new_passwords.run(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """On the login capacity."""
        target = self._dummy_hash if password_hash is None else password_hash
        try:
            await self._login.run(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return password_hash is not None

    def close(self) -> None:
        self._login.close()
        self._new_passwords.close()
