"""(a) The bare design, the ceiling of issue 14: none of the project's code.

aiohttp on uvloop, redis-py's default asyncio client (``Redis.from_url``, its default
pool, ``register_script``), and one transfer script of the same shape as lua/transfer.lua's
work on the happy path: check the payer's funds, debit, credit, take the next id, append to
a stream. No sessions, no validation beyond what parsing needs, no persistence, no metrics.

    gunicorn benchmarks.bare_app:create --worker-class aiohttp.GunicornUVLoopWebWorker \
        --workers 2 --bind 127.0.0.1:8093      (REDIS_URL names the Redis database)
"""

import os
import time

import orjson
from aiohttp import web
from redis.asyncio import Redis
from redis.commands.core import AsyncScript

TRANSFER = """
local balance = tonumber(redis.call('HGET', KEYS[3], 'balance_kopecks') or '0')
local amount = tonumber(ARGV[3])
if balance < amount then return {'insufficient_funds', '', ''} end
redis.call('HINCRBY', KEYS[3], 'balance_kopecks', -amount)
redis.call('HINCRBY', KEYS[4], 'balance_kopecks', amount)
local id = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '*', 'id', id, 'kind', 'transfer', 'from', ARGV[1], 'to', ARGV[2],
  'amount', ARGV[3], 'created_at_us', ARGV[4])
return {'ok', tostring(id), ARGV[4]}
"""
SCRIPT = web.AppKey("script", AsyncScript)


async def transfer(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    payer, payee, amount = body["from_user_id"], body["to_user_id"], body["amount"]
    reply = await request.app[SCRIPT](
        keys=["bare:seq", "bare:stream", f"bare:user:{payer}", f"bare:user:{payee}"],
        args=[payer, payee, amount, time.time_ns() // 1000],
    )
    if reply[0] != b"ok":
        return web.Response(body=orjson.dumps({"error": reply[0].decode()}), status=409)
    return web.Response(
        body=orjson.dumps({"id": int(reply[1]), "created_at_us": int(reply[2])}),
        status=201,
        content_type="application/json",
    )


async def create() -> web.Application:
    redis = Redis.from_url(os.environ["REDIS_URL"])
    # The payer's balance: far more than any run can spend; the stream capped by the harness.
    await redis.hset("bare:user:1", "balance_kopecks", 10**15)
    app = web.Application()
    app[SCRIPT] = redis.register_script(TRANSFER)
    app.router.add_post("/transfer", transfer)
    return app
