"""Typed application state: what the handlers may reach."""

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.auth.passwords import Passwords
from service.auth.sessions import WalletSessionStorage
from service.auth.throttle import LoginThrottle
from service.redis.money import MoneyScripts
from service.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
DATABASE = web.AppKey("database", AsyncEngine)
MONEY = web.AppKey("money", MoneyScripts)
PASSWORDS = web.AppKey("passwords", Passwords)
THROTTLE = web.AppKey("throttle", LoginThrottle)
SESSIONS = web.AppKey("sessions", WalletSessionStorage)
# The OpenAPI document, built once from the table of routes (service/http/routes.py).
OPENAPI_SPEC = web.AppKey("openapi_spec", dict[str, object])
