"""An HDR-style latency histogram: log-linear buckets, ~1% relative precision, mergeable.

Values are recorded as integer microseconds. Below ``2**SUB_BITS`` (128 us) every value has
its own bucket (exact). Above, each power-of-two range ``[2**b, 2**(b+1))`` is split into
128 equal sub-buckets, so a bucket's width is at most 1/128 (0.78%) of its lower bound;
a percentile is reported as the bucket's midpoint, so it is within 0.4% (plus the 1 us
integer rounding) of the true order statistic. The range is 0 .. ``max_us`` (60 s by
default); larger values are clamped to ``max_us`` and counted in ``overflow``.

Percentiles use the nearest-rank definition (numpy ``method="inverted_cdf"``): the
``q``-th percentile is the smallest recorded value with at least ``q%`` of the values at or
below it. Two histograms with the same range merge exactly (counts add), so per-second or
per-process histograms can be combined without losing precision.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

SUB_BITS = 7
SUB_COUNT = 1 << SUB_BITS  # 128 sub-buckets per power of two
DEFAULT_MAX_US = 60_000_000  # 60 s


def bucket_index(value_us: int) -> int:
    """The bucket of a non-negative integer value (pure, vectorised twin below)."""
    if value_us < SUB_COUNT:
        return value_us
    shift = value_us.bit_length() - 1 - SUB_BITS
    return shift * SUB_COUNT + (value_us >> shift)


def bucket_bounds(index: int) -> tuple[int, int]:
    """``[low, high)`` integer bounds of a bucket."""
    if index < 2 * SUB_COUNT:
        return index, index + 1
    shift = index // SUB_COUNT - 1
    sub = index - shift * SUB_COUNT
    return sub << shift, (sub + 1) << shift


class Histogram:
    """Log-linear histogram of microsecond values; see the module doc for the guarantees."""

    __slots__ = ("_counts", "count", "max_us", "max_value", "min_value", "overflow", "total")

    def __init__(self, max_us: int = DEFAULT_MAX_US) -> None:
        if max_us < SUB_COUNT:
            raise ValueError(f"max_us must be >= {SUB_COUNT}, got {max_us}")
        self.max_us = int(max_us)
        self._counts = np.zeros(bucket_index(self.max_us) + 1, dtype=np.int64)
        self.count = 0
        self.total = 0  # sum of recorded (clamped) values, us
        self.min_value = 0
        self.max_value = 0
        self.overflow = 0

    # -- recording -------------------------------------------------------------------------
    def record(self, value_us: float) -> None:
        """Record one value in microseconds (rounded to the nearest integer, >= 0)."""
        if not value_us >= 0:  # also rejects NaN
            raise ValueError(f"histogram values must be >= 0, got {value_us}")
        v = round(value_us)
        if v > self.max_us:
            self.overflow += 1
            v = self.max_us
        self._counts[bucket_index(v)] += 1
        if self.count == 0 or v < self.min_value:
            self.min_value = v
        if v > self.max_value:
            self.max_value = v
        self.count += 1
        self.total += v

    def record_seconds(self, seconds: float) -> None:
        self.record(seconds * 1e6)

    def record_many(self, values_us: Iterable[float] | np.ndarray) -> None:
        """Record many values at once (vectorised)."""
        arr = np.asarray(values_us, dtype=np.float64).ravel()
        if arr.size == 0:
            return
        if not np.all(arr >= 0):
            raise ValueError("histogram values must be >= 0 (and not NaN)")
        v = np.rint(arr).astype(np.int64)
        over = v > self.max_us
        self.overflow += int(over.sum())
        v[over] = self.max_us
        np.add.at(self._counts, _bucket_index_array(v), 1)
        lo, hi = int(v.min()), int(v.max())
        self.min_value = lo if self.count == 0 else min(self.min_value, lo)
        self.max_value = max(self.max_value, hi)
        self.count += int(v.size)
        self.total += int(v.sum())

    def merge(self, other: Histogram) -> Histogram:
        """Add another histogram's counts into this one (in place; returns self)."""
        if other.max_us != self.max_us:
            raise ValueError(f"cannot merge histograms of ranges {self.max_us} and {other.max_us}")
        if other.count == 0:
            return self
        self._counts += other._counts
        self.min_value = other.min_value if self.count == 0 else min(self.min_value, other.min_value)
        self.max_value = max(self.max_value, other.max_value)
        self.count += other.count
        self.total += other.total
        self.overflow += other.overflow
        return self

    # -- reading ---------------------------------------------------------------------------
    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0..100) in microseconds, nearest-rank; 0.0 when empty."""
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be within [0, 100], got {q}")
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.count))
        cum = np.cumsum(self._counts)
        index = int(np.searchsorted(cum, rank))
        low, high = bucket_bounds(index)
        mid = low if high - low == 1 else (low + high - 1) / 2.0
        return float(min(max(mid, self.min_value), self.max_value))

    def percentiles(self, qs: Iterable[float]) -> dict[float, float]:
        return {q: self.percentile(q) for q in qs}

    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def cdf_points(self) -> list[tuple[float, float]]:
        """(value_us, fraction of values <= it) for each non-empty bucket, ascending."""
        out: list[tuple[float, float]] = []
        if self.count == 0:
            return out
        cum = 0
        for index in np.flatnonzero(self._counts):
            cum += int(self._counts[index])
            _low, high = bucket_bounds(int(index))
            top = min(max(high - 1, self.min_value), self.max_value)
            out.append((float(top), cum / self.count))
        return out

    # -- transport -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A compact JSON-able form (sparse counts); ``from_dict`` restores it exactly."""
        nz = np.flatnonzero(self._counts)
        return {
            "max_us": self.max_us,
            "count": self.count,
            "total": self.total,
            "min": self.min_value,
            "max": self.max_value,
            "overflow": self.overflow,
            "buckets": [[int(i), int(self._counts[i])] for i in nz],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls(int(data["max_us"]))
        for index, n in data["buckets"]:
            h._counts[int(index)] = int(n)
        h.count = int(data["count"])
        h.total = int(data["total"])
        h.min_value = int(data["min"])
        h.max_value = int(data["max"])
        h.overflow = int(data["overflow"])
        if int(h._counts.sum()) != h.count:
            raise ValueError("histogram data is inconsistent: bucket counts != count")
        return h

    def __repr__(self) -> str:
        return (
            f"Histogram(count={self.count}, p50={self.percentile(50):.0f}us, "
            f"p99={self.percentile(99):.0f}us, max={self.max_value}us)"
        )


def _bucket_index_array(v: np.ndarray) -> np.ndarray:
    """Vectorised ``bucket_index`` for an int64 array of values >= 0."""
    out = v.copy()
    big = v >= SUB_COUNT
    if np.any(big):
        vb = v[big]
        # floor(log2(v)) exactly for int64: frexp gives v = m * 2**e with 0.5 <= m < 1
        _, exp = np.frexp(vb.astype(np.float64))
        bits = exp.astype(np.int64)  # == bit_length for integers < 2**53
        shift = bits - 1 - SUB_BITS
        out[big] = shift * SUB_COUNT + (vb >> shift)
    return out
