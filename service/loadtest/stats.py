"""Constant-size records for ``wallet loadtest``, whatever the length of the run: a latency
histogram and a set of transaction ids kept as a bitmap per epoch (ids are dense integers
within a bucket's epoch)."""

import math
from collections import Counter
from collections.abc import Iterator

from service.domain.limits import TXN_IDS_PER_EPOCH

# Histogram buckets are 0.5 % wide, from 1 microsecond up: a percentile is exact to 0.5 %.
_STEP = math.log(1.005)
_FLOOR_MS = 0.001
_MARGIN = 1 << 16


class Histogram:
    __slots__ = ("buckets", "count", "max_ms")

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.count = 0
        self.max_ms = 0.0

    def add(self, ms: float) -> None:
        self.count += 1
        self.max_ms = max(self.max_ms, ms)
        self.buckets[int(math.log(max(ms, _FLOOR_MS) / _FLOOR_MS) / _STEP)] += 1

    def percentile(self, p: float) -> float:
        """The nearest-rank percentile, as the upper bound of its bucket (at most the max)."""
        rank = max(1, math.ceil(p / 100 * self.count))
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(self.max_ms, _FLOOR_MS * math.exp((bucket + 1) * _STEP))
        return self.max_ms


class _Bits:
    """Non-negative integers as bits over the span from the smallest to the largest."""

    __slots__ = ("base", "bits")

    def __init__(self) -> None:
        self.base = 0
        self.bits = bytearray()

    def add(self, value: int) -> bool:
        """True if the value was not in the set yet."""
        if not self.bits:
            self.base = max(0, value - _MARGIN) // 8 * 8
        elif value < self.base:  # grow downwards: rare, the ids mostly come in order
            new_base = max(0, value - _MARGIN) // 8 * 8
            self.bits[:0] = bytes((self.base - new_base) // 8)
            self.base = new_base
        index = value - self.base
        if index >> 3 >= len(self.bits):
            self.bits += bytes(max((index >> 3) + 1 - len(self.bits), len(self.bits) // 2))
        mask = 1 << (index & 7)
        if self.bits[index >> 3] & mask:
            return False
        self.bits[index >> 3] |= mask
        return True

    def __contains__(self, value: int) -> bool:
        index = value - self.base
        return (
            index >= 0
            and index >> 3 < len(self.bits)
            and bool(self.bits[index >> 3] >> (index & 7) & 1)
        )

    def __iter__(self) -> Iterator[int]:
        for position, byte in enumerate(self.bits):
            if byte:
                yield from (self.base + position * 8 + b for b in range(8) if byte >> b & 1)


class IdSet:
    """Transaction or hold ids, as bits per epoch (service/domain/limits.py): each bucket's
    counter issues ids in epochs of its own, 10^9 apart, so one span of bits over them all
    would be mostly empty (docs/scaling.md, "Id epochs")."""

    __slots__ = ("count", "epochs", "max", "max_of_epoch")

    def __init__(self) -> None:
        self.epochs: dict[int, _Bits] = {}
        self.max_of_epoch: dict[int, int] = {}
        self.count = 0
        self.max = 0

    def add(self, value: int) -> bool:
        """True if the value was not in the set yet."""
        epoch = value // TXN_IDS_PER_EPOCH
        if not self.epochs.setdefault(epoch, _Bits()).add(value):
            return False
        self.count += 1
        self.max = max(self.max, value)
        self.max_of_epoch[epoch] = max(self.max_of_epoch.get(epoch, -1), value)
        return True

    def __contains__(self, value: int) -> bool:
        bits = self.epochs.get(value // TXN_IDS_PER_EPOCH)
        return bits is not None and value in bits

    @property
    def min(self) -> int:
        return next(iter(self), 0)

    def max_in_epoch(self, epoch: int) -> int:
        """The largest id of the epoch in the set; -1 for none."""
        return self.max_of_epoch.get(epoch, -1)

    def __iter__(self) -> Iterator[int]:
        for epoch in sorted(self.epochs):
            yield from self.epochs[epoch]

    def __len__(self) -> int:
        return self.count
