"""Server-side sessions (aiohttp-session RedisStorage): the cookie holds only a random id.

Absolute expiry is aiohttp-session's own: a session older than ``max_age`` since it was
created loads as empty. Idle expiry is ours: ``seen_at`` is refreshed at most once a
minute, so most requests do not write the session back.
"""

import secrets
import time
from dataclasses import dataclass

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from aiohttp_session.redis_storage import RedisStorage
from redis.asyncio import Redis

from service.errors import ApiError
from service.settings import Settings

COOKIE_NAME = "wallet_session"
_SEEN_AT_REFRESH_S = 60


class WalletSessionStorage(RedisStorage):
    """RedisStorage that deletes an invalidated session instead of storing it empty."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(
            redis,
            cookie_name=COOKIE_NAME,
            max_age=settings.session_absolute_timeout_s,
            secure=settings.cookie_secure,
            httponly=True,
            samesite="Lax",
            key_factory=lambda: secrets.token_urlsafe(32),
        )
        self._idle_timeout_s = settings.session_idle_timeout_s

    def redis_key(self, identity: str) -> str:
        return f"{COOKIE_NAME}_{identity}"

    async def revoke(self, session: Session) -> None:
        if session.identity is not None:
            await self._redis.delete(self.redis_key(str(session.identity)))

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        if session.empty:
            await self.revoke(session)
            self.save_cookie(response, "")
            return
        await super().save_session(request, response, session)


@dataclass(frozen=True, slots=True)
class SessionUser:
    user_id: int
    username: str


async def current_user(request: web.Request, idle_timeout_s: int) -> SessionUser:
    """The logged-in user, or 401 unauthorized."""
    session = await get_session(request)
    user_id = session.get("user_id")
    username = session.get("username")
    seen_at = session.get("seen_at")
    if (
        not isinstance(user_id, int)
        or not isinstance(username, str)
        or not isinstance(seen_at, int)
    ):
        raise ApiError(401, "unauthorized", "log in first")
    now = int(time.time())
    if now - seen_at > idle_timeout_s:
        session.invalidate()
        raise ApiError(401, "unauthorized", "the session expired; log in again")
    if now - seen_at >= _SEEN_AT_REFRESH_S:
        session["seen_at"] = now
    return SessionUser(user_id=user_id, username=username)


async def start_session(
    request: web.Request, storage: WalletSessionStorage, user: SessionUser
) -> None:
    """A new session id at every login; the one the client sent is revoked (no fixation)."""
    await storage.revoke(await get_session(request))
    session = await new_session(request)
    session["user_id"] = user.user_id
    session["username"] = user.username
    session["seen_at"] = int(time.time())


async def end_session(request: web.Request) -> None:
    (await get_session(request)).invalidate()
