"""Server-side sessions (aiohttp-session RedisStorage): the cookie holds only a random id.

Absolute expiry is aiohttp-session's own: a session older than ``max_age`` since it was
created loads as empty (the money scripts check the same ``created``). Idle expiry is
the Redis key's TTL, given back in full by every authenticated request: by GETEX here,
by EXPIRE inside the money scripts.

Deposits and transfers do not load the session in Python: the session key goes into
the money script, which checks it in the same round trip (lua/includes/check_session.lua).
A per-process cache maps a cookie to its user only to build that call; it is a hint,
never the authority, so a revoked session is refused at once by every process.
"""

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp_session import Session, get_session, new_session
from aiohttp_session.redis_storage import RedisStorage
from redis.asyncio import Redis

from service.domain import refusals
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.money import SessionCheck
from service.settings import Settings

SESSION_CACHE_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class SessionUser:
    user_id: int
    username: str


class WalletSessionStorage(RedisStorage):
    """RedisStorage whose key TTL is the idle timeout, and which deletes an invalidated
    session instead of storing it empty."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        super().__init__(
            redis,
            cookie_name=keyspace.SESSION_COOKIE,
            max_age=settings.session_absolute_timeout_s,
            secure=settings.cookie_secure,
            httponly=True,
            samesite="Lax",
            key_factory=lambda: secrets.token_urlsafe(32),
        )
        self.idle_timeout_s = settings.session_idle_timeout_s
        self.absolute_timeout_s = settings.session_absolute_timeout_s
        self._users: OrderedDict[str, SessionUser] = OrderedDict()

    def redis_key(self, identity: str) -> str:
        return keyspace.session(identity)

    async def load_session(self, request: web.Request) -> Session:
        cookie = self.load_cookie(request)
        raw = None
        if cookie is not None:
            raw = cast(
                bytes | None,
                await self._redis.getex(self.redis_key(cookie), ex=self.idle_timeout_s),
            )
        if raw is None:
            return Session(None, data=None, new=True, max_age=self.max_age)
        try:
            data = self._decoder(raw.decode("utf-8"))
        except ValueError:
            data = None
        return Session(cookie, data=data, new=False, max_age=self.max_age)

    async def save_session(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        if session.empty:
            await self.revoke(session)
            self.save_cookie(response, "")
            return
        identity = session.identity or self._key_factory()
        self.save_cookie(response, identity, max_age=session.max_age)
        data = self._encoder(self._get_session_data(session))
        await self._redis.set(self.redis_key(identity), data, ex=self.idle_timeout_s)

    async def revoke(self, session: Session) -> None:
        if session.identity is not None:
            self._users.pop(str(session.identity), None)
            await self._redis.delete(self.redis_key(str(session.identity)))

    def remember(self, cookie: str, user: SessionUser) -> None:
        self._users[cookie] = user
        if len(self._users) > SESSION_CACHE_MAX_ENTRIES:
            self._users.popitem(last=False)

    def forget(self, cookie: str) -> None:
        self._users.pop(cookie, None)

    def cached_user(self, cookie: str) -> SessionUser | None:
        return self._users.get(cookie)


def _session_user(session: Session) -> SessionUser:
    user_id = session.get("user_id")
    username = session.get("username")
    if not isinstance(user_id, int) or not isinstance(username, str):
        raise Refused(refusals.UNAUTHORIZED)
    return SessionUser(user_id=user_id, username=username)


async def current_user(request: web.Request) -> SessionUser:
    """The logged-in user, or 401 unauthorized; refreshes the session's idle TTL."""
    return _session_user(await get_session(request))


async def money_session(
    request: web.Request, storage: WalletSessionStorage
) -> tuple[SessionUser, SessionCheck]:
    """The user to act for, and the session the money script must verify."""
    cookie = storage.load_cookie(request)
    if not cookie:
        raise Refused(refusals.UNAUTHORIZED)
    user = storage.cached_user(cookie)
    if user is None:
        user = _session_user(await get_session(request))
        storage.remember(cookie, user)
    check = SessionCheck(
        redis_key=storage.redis_key(cookie),
        absolute_timeout_s=storage.absolute_timeout_s,
        idle_timeout_s=storage.idle_timeout_s,
    )
    return user, check


async def start_session(
    request: web.Request, storage: WalletSessionStorage, user: SessionUser
) -> None:
    """A new session id at every login; the one the client sent is revoked (no fixation)."""
    await storage.revoke(await get_session(request))
    session = await new_session(request)
    session["user_id"] = user.user_id
    session["username"] = user.username


async def end_session(request: web.Request) -> None:
    (await get_session(request)).invalidate()
