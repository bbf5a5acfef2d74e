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

# Transaction ids come in epochs: epoch e is the ids e * TXN_IDS_PER_EPOCH + 1 ..
# (e + 1) * TXN_IDS_PER_EPOCH - 1. PostgreSQL hands each epoch out once (persistence/
# txn_id_epochs.py), a Redis counter starts at the beginning of one and never leaves it
# (lua/includes/check_session.lua), so no id is issued twice, whatever Redis loses. A
# counter close to its epoch's end moves to a new one (service/ledger/id_counter.py).
# 10^6 epochs of 10^9 ids keep every id within the 15 digits the scripts accept. Each change
# of primary costs an epoch for every bucket the primary serves (docs/scaling.md, "Id
# epochs"): with 1,024 buckets on 3 primaries, about 2,900 failovers before the ids run out.
TXN_IDS_PER_EPOCH = 10**9
MAX_TXN_ID_EPOCH = 999_999
# The counter keeper moves a counter to a new epoch once it is this close to its end: at
# 100,000 ids a second, 100 s before the money scripts would refuse (epoch_exhausted).
EPOCH_ROLLOVER_MARGIN_IDS = 10**7

# Money keys are spread over this many buckets at most (service/redis/keyspace.py): each
# change of primary costs an epoch per bucket it serves (see above), and a session id
# spells its bucket in at most four digits.
MAX_BUCKETS = 1024

# History pages.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


def is_valid_idempotency_key(key: str) -> bool:
    """1..64 printable ASCII, as the scripts check it."""
    return 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS and all(" " <= c <= "~" for c in key)


# Holds (the contract's "Holds"): how long a hold may stay pending, in seconds.
MIN_HOLD_EXPIRES_IN_S = 60
MAX_HOLD_EXPIRES_IN_S = 604_800
DEFAULT_HOLD_EXPIRES_IN_S = 86_400
# Pending holds one payer may have at once: every script that spends releases the payer's
# expired holds first (lua/includes/holds.lua), so this bounds that work.
MAX_PENDING_HOLDS_PER_PAYER = 1_000

# Batch transfers: legs in one batch.
MAX_BATCH_LEGS = 100

# Statements: items in one, and the longest period it covers.
MAX_STATEMENT_ITEMS = 10_000
MAX_STATEMENT_DAYS = 366
