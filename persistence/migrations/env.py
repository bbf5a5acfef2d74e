"""Alembic environment: runs on the connection that persistence.migrate hands over."""

from alembic import context
from sqlalchemy.engine import Connection

from persistence.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run migrations with `wallet migrate`, which supplies the connection")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
