"""POST /api/sign-up/, /api/login/, /api/logout/."""

from aiohttp import web

from persistence.users import UsernameTaken, create_user, find_user
from service.auth.password_rules import check_new_password
from service.auth.sessions import SessionUser, current_user, end_session, start_session
from service.domain import refusals
from service.domain.refusals import Refused
from service.http.client_address import client_address
from service.http.errors import json_response
from service.http.input import read_body
from service.http.schemas import Credentials, SignUpRequest
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


async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    throttle = request.app[LOGIN_THROTTLE]
    address = client_address(request)
    await throttle.begin(body.username, address)
    try:
        user = await find_user(request.app[DATABASE], body.username)
        verified = await request.app[PASSWORDS].verify(
            None if user is None else user.password_hash, body.password
        )
    except Exception:  # too busy or a backend down: the password was not checked
        await throttle.not_checked(body.username, address)
        raise
    if user is None or not verified:
        await throttle.failed(body.username, address)
        raise Refused(refusals.INVALID_CREDENTIALS)
    await throttle.succeeded(body.username, address)
    await request.app[MONEY].register_user(user.id)
    await start_session(request, request.app[SESSIONS], SessionUser(user.id, user.username))
    return json_response({"id": user.id, "username": user.username})


async def logout(request: web.Request) -> web.Response:
    await current_user(request)
    await end_session(request)
    return web.Response(status=204)
