"""Server-side sessions (aiohttp-session, stored in Redis): the cookie holds only a random id.

Absolute expiry is aiohttp-session's own: a session older than ``max_age`` since it was
created loads as empty (the money scripts check the same ``created``). Idle expiry is
the Redis key's TTL, given back in full by every authenticated request: by GETEX here,
by EXPIRE inside the money scripts.

Deposits and transfers do not load the session in Python: the session key goes into
the money script, which checks it in the same round trip (lua/includes/check_session.lua).
A per-process cache maps a cookie to its user only to build that call; it is a hint,
never the authority, so a revoked session is refused at once by every process.

Every session is stored once, at login, by lua/start_session.lua, which also enters it in
its user's index (``sessions:{b<bucket>}:<user_id>``); nothing writes a session again, so one that
ended never comes back. lua/end_sessions.lua ends all of a user's sessions at once
(logout/all, a password change).
"""

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from aiohttp import web
from aiohttp_session import AbstractStorage, Session, get_session

from service.domain import refusals
from service.domain.refusals import Refused
from service.redis import keyspace
from service.redis.money import SessionCheck
from service.redis.scripts import LuaScript
from service.redis.types import RedisClient
from service.settings import Settings

SESSION_CACHE_MAX_ENTRIES = 100_000


@dataclass(frozen=True, slots=True)
class SessionUser:
    user_id: int
    username: str


class WalletSessionStorage(AbstractStorage):
    """aiohttp-session's storage of sessions in Redis, as its RedisStorage does, but also on
    a cluster (RedisStorage takes one Redis only): the key's TTL is the idle timeout; a
    session is stored once, at login (``create``), and never written back."""

    def __init__(self, redis: RedisClient, settings: Settings) -> None:
        super().__init__(
            cookie_name=keyspace.SESSION_COOKIE,
            max_age=settings.session_absolute_timeout_s,
            secure=settings.cookie_secure,
            httponly=True,
            samesite="Lax",
        )
        self._redis = redis
        self.idle_timeout_s = settings.session_idle_timeout_s
        self.absolute_timeout_s = settings.session_absolute_timeout_s
        self.max_sessions_per_user = settings.session_max_per_user
        self._users: OrderedDict[str, SessionUser] = OrderedDict()
        self._start = LuaScript(redis, "start_session")
        self._end_all = LuaScript(redis, "end_sessions")

    def redis_key(self, identity: str) -> str:
        """The key of a session that loaded, or that ``create`` made."""
        key = keyspace.session(identity)
        assert key is not None, "only a session that loaded, or a new one, has a key"
        return key

    async def load_session(self, request: web.Request) -> Session:
        cookie = self.load_cookie(request)
        # A cookie no session can have (keyspace.session) loads as none, unasked.
        key = None if cookie is None else keyspace.session(cookie)
        raw = None
        if key is not None:
            raw = cast(bytes | None, await self._redis.getex(key, ex=self.idle_timeout_s))
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
        """The middleware calls this for a session a handler changed, and none does: login
        stores a new one with ``create``, logout ends one with ``end``. Writing a loaded
        session back could bring back one that logout/all ended meanwhile on another
        process."""
        raise RuntimeError("sessions are stored by create() and ended by end() or end_all()")

    async def create(self, user: SessionUser) -> str:
        """Stores a new session of the user under a new random id and enters it in the
        user's index (ending their oldest session at the cap); returns the id."""
        session_id = keyspace.new_session_id(user.user_id, secrets.token_urlsafe(32))
        data = {
            "created": int(time.time()),
            "session": {"user_id": user.user_id, "username": user.username},
        }
        await self._start(
            keys=[self.redis_key(session_id), keyspace.sessions_of_user(user.user_id)],
            args=[
                user.user_id,
                session_id,
                self._encoder(data),
                self.idle_timeout_s,
                self.absolute_timeout_s,
                self.max_sessions_per_user,
            ],
        )
        return session_id

    def set_cookie(self, response: web.StreamResponse, session_id: str) -> None:
        self.save_cookie(response, session_id, max_age=self.max_age)

    def clear_cookie(self, response: web.StreamResponse) -> None:
        self.save_cookie(response, "")

    async def end(self, session_id: str, user_id: int | None) -> None:
        """Ends one session. Without its user (a session past its absolute lifetime loads
        with no data) its index entry stays until start_session.lua finds the key gone."""
        self._users.pop(session_id, None)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.redis_key(session_id))
            if user_id is not None:
                pipe.zrem(keyspace.sessions_of_user(user_id), session_id)
            await pipe.execute()

    async def end_all(self, user_id: int) -> int:
        """Ends every session of the user at once, on every process; returns how many
        were alive. Other processes' caches keep the cookies only as hints: the money
        scripts refuse them (lua/end_sessions.lua)."""
        ended: int = await self._end_all(keys=[keyspace.sessions_of_user(user_id)], args=[])
        return ended

    async def revoke(self, session: Session) -> None:
        """Ends the session a request loaded, if its cookie named one."""
        if session.identity is not None:
            user_id = session.get("user_id")
            await self.end(str(session.identity), user_id if isinstance(user_id, int) else None)

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
) -> str:
    """A new session id at every login; the one the client sent is revoked (no fixation).
    Returns the new id: the caller sets the cookie once the session may stand."""
    await storage.revoke(await get_session(request))
    return await storage.create(user)


async def end_session(
    request: web.Request, storage: WalletSessionStorage, response: web.StreamResponse
) -> None:
    """Ends the request's session (401 unauthorized without one) and clears its cookie."""
    session = await get_session(request)
    user = _session_user(session)
    await storage.end(str(session.identity), user.user_id)
    storage.clear_cookie(response)
