"""Typed application state: what the handlers may reach."""

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.login_throttle import LoginThrottle
from service.auth.passwords import Passwords
from service.auth.sessions import WalletSessionStorage
from service.auth.window_limit import WindowLimit
from service.ledger.id_buckets import IdBuckets
from service.redis.batches import BatchScripts
from service.redis.holds import HoldScripts
from service.redis.money import MoneyScripts
from service.redis.refunds import RefundScripts
from service.redis.types import RedisClient
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS: web.AppKey[RedisClient] = web.AppKey("redis")
DATABASE = web.AppKey("database", AsyncEngine)
# Which bucket issued an id: a payee's hold may be in its payer's bucket.
ID_BUCKETS = web.AppKey("id_buckets", IdBuckets)
MONEY = web.AppKey("money", MoneyScripts)
HOLDS = web.AppKey("holds", HoldScripts)
BATCHES = web.AppKey("batches", BatchScripts)
REFUNDS = web.AppKey("refunds", RefundScripts)
PASSWORDS = web.AppKey("passwords", Passwords)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
SIGN_UP_LIMIT = web.AppKey("sign_up_limit", WindowLimit)
RECIPIENT_MISS_LIMIT = web.AppKey("recipient_miss_limit", WindowLimit)
SESSIONS = web.AppKey("sessions", WalletSessionStorage)
# The OpenAPI document, built once from the table of routes (service/http/routes.py).
OPENAPI_SPEC = web.AppKey("openapi_spec", dict[str, object])
