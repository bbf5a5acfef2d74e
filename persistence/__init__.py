"""The durable ledger in PostgreSQL."""
