"""POST /api/sign-up/, /api/login/, /api/logout/."""

from aiohttp import web

from persistence.users import UsernameTaken, create_user, find_user
from service.errors import ApiError, json_response
from service.http_input import read_body
from service.passwords import PasswordHashingBusy
from service.schemas import Credentials
from service.sessions import SessionUser, current_user, end_session, start_session
from service.state import DATABASE, MONEY, PASSWORDS, SESSIONS, THROTTLE

routes = web.RouteTableDef()


def _busy() -> ApiError:
    return ApiError(
        503, "server_busy", "too many sign-ups and logins at once; retry shortly", retry_after_s=1
    )


@routes.post("/api/sign-up/")
async def sign_up(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    try:
        password_hash = await request.app[PASSWORDS].hash(body.password)
    except PasswordHashingBusy:
        raise _busy() from None
    try:
        # PostgreSQL first, Redis last: a crash in between leaves a user with no wallet,
        # which holds no money and is given one at login.
        user_id = await create_user(request.app[DATABASE], body.username, password_hash)
    except UsernameTaken:
        raise ApiError(409, "username_taken", "this username is taken", "username") from None
    await request.app[MONEY].register_user(user_id)
    return json_response({"id": user_id, "username": body.username}, status=201)


@routes.post("/api/login/")
async def login(request: web.Request) -> web.Response:
    body = await read_body(request, Credentials)
    throttle = request.app[THROTTLE]
    address = request.remote or "unknown"
    if not await throttle.acquire(body.username, address):
        raise ApiError(429, "too_many_attempts", "too many failed logins; try again later")
    user = await find_user(request.app[DATABASE], body.username)
    try:
        verified = await request.app[PASSWORDS].verify(
            None if user is None else user.password_hash, body.password
        )
    except PasswordHashingBusy:
        await throttle.not_checked(body.username, address)
        raise _busy() from None
    if user is None or not verified:
        raise ApiError(401, "invalid_credentials", "wrong username or password")
    await throttle.succeeded(body.username, address)
    await request.app[MONEY].register_user(user.id)
    await start_session(request, request.app[SESSIONS], SessionUser(user.id, user.username))
    return json_response({"id": user.id, "username": user.username})


@routes.post("/api/logout/")
async def logout(request: web.Request) -> web.Response:
    await current_user(request)
    await end_session(request)
    return web.Response(status=204)
