"""POST /api/sign-up/, /api/login/, /api/logout/, /api/logout/all/, /api/password/."""

from aiohttp import web

from persistence.users import (
    StoredUser,
    UsernameTaken,
    create_user,
    find_user,
    password_hash_of,
    replace_password_hash,
)
from service.auth.password_rules import check_new_password
from service.auth.sessions import SessionUser, current_user, end_session, start_session
from service.domain import refusals
from service.domain.refusals import Refused
from service.http.client_address import client_address
from service.http.errors import json_response
from service.http.input import read_body
from service.http.schemas import Credentials, PasswordChange, SignUpRequest
from service.http.state import (
    DATABASE,
    LOGIN_THROTTLE,
    MONEY,
    PASSWORDS,
    SESSIONS,
    SIGN_UP_LIMIT,
)
from service.redis import keyspace


async def sign_up(request: web.Request) -> web.Response:
    body = await read_body(request, SignUpRequest)
    check_new_password(body.password)
    address = client_address(request)
    sign_ups = keyspace.sign_ups_of_address(address)
    retry_after_s = await request.app[SIGN_UP_LIMIT].count_unless_reached(sign_ups)
    if retry_after_s is not None:
        raise Refused(refusals.TOO_MANY_SIGN_UPS, retry_after_s=retry_after_s)
    database = request.app[DATABASE]
    # A cheap look before the costly hash, so that sign-ups for a taken name cost no
    # hashing; the unique index below stays the guard against two sign-ups at once.
    if await find_user(database, body.username) is not None:
        raise Refused(refusals.USERNAME_TAKEN, field="username")
    password_hash = await request.app[PASSWORDS].hash(body.password)
    try:
        # PostgreSQL first, Redis last: a crash in between leaves a user with no wallet,
        # which holds no money and is given one at login.
        user_id = await create_user(database, body.username, password_hash)
    except UsernameTaken:
        raise Refused(refusals.USERNAME_TAKEN, field="username") from None
    await request.app[MONEY].register_user(user_id)
    return json_response({"id": user_id, "username": body.username}, status=201)


async def _verified_user(request: web.Request, username: str, password: str) -> StoredUser:
    """The user, if this is their password; else 401 invalid_credentials, counted by the
    login throttle (429 too_many_attempts, with Retry-After, once over its limits)."""
    throttle = request.app[LOGIN_THROTTLE]
    address = client_address(request)
    await throttle.begin(username, address)
    try:
        user = await find_user(request.app[DATABASE], username)
        verified = await request.app[PASSWORDS].verify(
            None if user is None else user.password_hash, password
        )
    except Exception:  # too busy or a backend down: the password was not checked
        await throttle.not_checked(username, address)
        raise
    if user is None or not verified:
        await throttle.failed(username, address)
        raise Refused(refusals.INVALID_CREDENTIALS)
    await throttle.succeeded(username, address)
    return user


async def _open_session(
    request: web.Request, response: web.StreamResponse, user: SessionUser, verified_hash: str
) -> None:
    """Starts a session for a user whose password was just checked against
    ``verified_hash``, and sets its cookie on the response.

    A password change stores the new hash, then ends every session in the user's index.
    A login that checked the old hash may store its session just after that end: so the
    hash is read again once the session is stored, and either the change's end found the
    session or this read finds the new hash and ends it.
    """
    sessions = request.app[SESSIONS]
    session_id = await start_session(request, sessions, user)
    if await password_hash_of(request.app[DATABASE], user.user_id) != verified_hash:
        await sessions.end(session_id, user.user_id)
        raise Refused(refusals.INVALID_CREDENTIALS)
    sessions.set_cookie(response, session_id)


async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    user = await _verified_user(request, body.username, body.password)
    await request.app[MONEY].register_user(user.id)
    response = json_response({"id": user.id, "username": user.username})
    await _open_session(request, response, SessionUser(user.id, user.username), user.password_hash)
    return response


async def logout(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    await end_session(request, request.app[SESSIONS], response)
    return response


async def logout_all(request: web.Request) -> web.Response:
    user = await current_user(request)
    sessions = request.app[SESSIONS]
    await sessions.end_all(user.user_id)
    response = web.Response(status=204)
    # Already ended with the others: this clears its cookie and this process's cache.
    await end_session(request, sessions, response)
    return response


async def change_password(request: web.Request) -> web.Response:
    """The current password is checked (and throttled) like a login's; then every session
    of the user ends, this one included, and this client gets a new one."""
    user = await current_user(request)
    body = await read_body(request, PasswordChange)
    check_new_password(body.new_password, field="new_password")
    stored = await _verified_user(request, user.username, body.current_password)
    new_hash = await request.app[PASSWORDS].hash(body.new_password)
    # Of two changes that checked the same current password, the first to store its hash
    # wins; for the other the password it was given is no longer the current one.
    if not await replace_password_hash(
        request.app[DATABASE], stored.id, stored.password_hash, new_hash
    ):
        raise Refused(refusals.INVALID_CREDENTIALS)
    # The hash is stored before the sessions end (see _open_session). Should Redis fail
    # in between, the answer is 503 and the old sessions live on: the client retries with
    # the new password as the current one.
    await request.app[SESSIONS].end_all(user.user_id)
    response = web.Response(status=204)
    await _open_session(request, response, user, new_hash)
    return response
