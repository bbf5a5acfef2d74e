"""Who is calling: sessions, password hashing, login throttling."""
