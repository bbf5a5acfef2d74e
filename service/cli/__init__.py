"""The `wallet` command and the processes it runs."""
