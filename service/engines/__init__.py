"""Real Valkey and PostgreSQL servers from pip wheels, as child processes on a data directory."""
