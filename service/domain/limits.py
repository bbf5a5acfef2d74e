"""Every limit of the API besides amounts (service/domain/amounts.py), with its unit."""

# A request body; aiohttp refuses a longer one (413).
MAX_BODY_BYTES = 64 * 1024

# Usernames are ASCII only, so Unicode look-alikes are refused, not normalized.
USERNAME_PATTERN = r"^[A-Za-z0-9_.\-]{3,32}$"
MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 128
# 15 digits: what the scripts accept (lua/includes/validate.lua).
MAX_USER_ID = 10**15 - 1

IDEMPOTENCY_KEY_MAX_CHARS = 64

# History pages.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def is_valid_idempotency_key(key: str) -> bool:
    """1..64 printable ASCII, as the scripts check it."""
    return 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS and all(" " <= c <= "~" for c in key)
