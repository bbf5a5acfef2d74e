"""The wallet's concepts: amounts and limits, transactions, the catalog of refusals.

No I/O and no imports from the rest of the project: everything else depends on this.
"""
