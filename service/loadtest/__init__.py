"""`wallet loadtest`: drives a running service and checks the money invariants."""
