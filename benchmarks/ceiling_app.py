"""The ceiling of this design in Python: a bare aiohttp endpoint running the same transfer
EVALSHA as the service, with no sessions, validation or persistence.

    gunicorn benchmarks.ceiling_app:create --worker-class aiohttp.GunicornUVLoopWebWorker \
        --workers 2 --bind 127.0.0.1:8090      (REDIS_URL names the Redis database)
"""

import os

import orjson
from aiohttp import web

from service.domain.refusals import Refused
from service.redis.client import connect_redis
from service.redis.money import MoneyScripts
from service.settings import Settings

MONEY = web.AppKey("money", MoneyScripts)


async def transfer(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    try:
        accepted = await request.app[MONEY].transfer(
            body["from_user_id"], body["to_user_id"], body["amount"]
        )
    except Refused as refused:
        return web.Response(body=orjson.dumps({"error": refused.code}), status=409)
    return web.Response(
        body=orjson.dumps({"id": accepted.txn_id, "created_at_us": accepted.created_at_us}),
        status=201,
        content_type="application/json",
    )


async def create() -> web.Application:
    settings = Settings(redis_url=os.environ["REDIS_URL"])
    app = web.Application()
    app[MONEY] = MoneyScripts(connect_redis(settings), settings)
    app.router.add_post("/transfer", transfer)
    return app
