"""argon2id password hashing, off the event loop (a hash costs tens of milliseconds of CPU)."""

import asyncio
from collections.abc import Callable
from typing import TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from service.domain import refusals
from service.domain.refusals import Refused
from service.settings import Settings

T = TypeVar("T")


# A refused hash is retried by the client after this long.
BUSY_RETRY_AFTER_S = 1


class Passwords:
    """At most ``password_hash_max_concurrent`` hashes run at once per process (each takes
    argon2_memory_kib of memory) and at most ``password_hash_max_queued`` wait; beyond
    that a sign-up or login is refused at once (503 ``server_busy``) instead of waiting
    without bound."""

    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost, memory_cost=settings.argon2_memory_kib
        )
        # Verified against when the username is unknown, so both failures cost the same time.
        self._dummy_hash = self._hasher.hash("not a password of anyone")
        self._slots = asyncio.Semaphore(settings.password_hash_max_concurrent)
        self._max_queued = settings.password_hash_max_queued
        self._queued = 0

    async def _in_a_slot(self, work: Callable[..., T], *args: str) -> T:
        if self._queued >= self._max_queued:
            raise Refused(refusals.SERVER_BUSY, retry_after_s=BUSY_RETRY_AFTER_S)
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            self._slots.release()

    async def hash(self, password: str) -> str:
        return await self._in_a_slot(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        target = self._dummy_hash if password_hash is None else password_hash
        try:
            await self._in_a_slot(self._hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        return password_hash is not None
