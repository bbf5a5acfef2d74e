"""Wallet service: balances in Redis, moved only by Lua scripts; a PostgreSQL ledger."""
