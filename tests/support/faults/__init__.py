"""Real processes for the fault tests and the long run: start, kill, load, check."""
