"""The Redis Lua scripts, one operation per file; shipped as package data."""
