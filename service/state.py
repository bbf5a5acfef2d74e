"""Typed application state: what the handlers may reach."""

from aiohttp import web
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from service.money import MoneyScripts
from service.passwords import Passwords
from service.sessions import WalletSessionStorage
from service.settings import Settings
from service.throttle import LoginThrottle

SETTINGS = web.AppKey("settings", Settings)
REDIS = web.AppKey("redis", Redis)
DATABASE = web.AppKey("database", AsyncEngine)
MONEY = web.AppKey("money", MoneyScripts)
PASSWORDS = web.AppKey("passwords", Passwords)
THROTTLE = web.AppKey("throttle", LoginThrottle)
SESSIONS = web.AppKey("sessions", WalletSessionStorage)
