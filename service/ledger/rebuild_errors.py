"""Why ``wallet rebuild`` stops (service/ledger/rebuild.py)."""


class RebuildRefused(Exception):
    """Rebuilding now would lose money (Redis holds transactions that may not be in the
    ledger), or the ledger holds what no rebuild can settle. The message says what was
    written: nothing, or where it stopped."""


class LedgerInconsistent(Exception):
    """The ledger gives a wallet no script could have left (a balance out of range, held
    above the balance); wallets before it were restored."""
