"""Money limits and formatting. Kopecks are integers everywhere; never a float."""

MAX_AMOUNT_KOPECKS = 10**12
# Keeps every balance exact inside Redis Lua, whose numbers are doubles (2^53 > 10^15 + 10^12).
MAX_BALANCE_KOPECKS = 10**15
CURRENCY = "RUB"


def format_rubles(amount_kopecks: int) -> str:
    """``10100`` -> ``"101.00"``; exact, from integer arithmetic only."""
    if amount_kopecks < 0:
        raise ValueError(f"negative amount: {amount_kopecks}")
    rubles, kopecks = divmod(amount_kopecks, 100)
    return f"{rubles}.{kopecks:02d}"
