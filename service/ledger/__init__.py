"""What joins Redis and the PostgreSQL ledger: the writer, histories, replay, reconcile and
rebuild."""
