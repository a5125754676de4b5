"""Latency histograms: ``hdrhistogram``'s ``HdrHistogram`` of integer microseconds, 1 us .. 1 h,
3 significant digits, plus the two things it lacks.

Everything else is hdrhistogram's own API, used directly by the callers:
``get_value_at_percentile(q)`` (nearest rank, the top of the value's bucket: at most 0.1% above
the recorded value, exact below 2048 us), ``get_total_count()``, ``get_max_value()``,
``get_mean_value()``, ``add(other)`` (merge, exact for histograms made here), ``encode()`` /
``HdrHistogram.decode()``. An empty histogram reads 0 everywhere. (A quirk of hdrhistogram
0.10.8: after ``add`` of an empty histogram, ``get_min_value()`` reads 0; nothing here reports
the min.) Not thread safe (nor is ``HdrHistogram``): the load generator records from one event
loop, the simulator under its shop lock.

What this module adds:

- ``record_us``: ``HdrHistogram.record_value`` silently drops a value above its range or below
  zero (it returns ``False``, the count does not change) and keeps a float's fraction in its
  min / max; here a value is rounded to integer microseconds, a value above ``MAX_US`` is
  clamped to it (a stall past the range still counts in the tail) and a negative or NaN
  value raises ``ValueError``.
- ``cdf_points``: the (value, fraction at or below it) steps of the plot's percentile curve.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

MAX_US = 3_600_000_000  # 1 hour: the highest value kept apart; larger ones are clamped to it
SIGNIFICANT_DIGITS = 3


def new_histogram() -> HdrHistogram:
    """An empty histogram of microseconds, 1 us .. ``MAX_US``, 3 significant digits."""
    return HdrHistogram(1, MAX_US, SIGNIFICANT_DIGITS)


def record_us(h: HdrHistogram, value_us: float) -> None:
    """Record one latency in microseconds (rounded; clamped to ``MAX_US``; >= 0)."""
    if not value_us >= 0:  # also rejects NaN
        raise ValueError(f"latency must be >= 0 us, got {value_us}")
    v = MAX_US if value_us >= MAX_US else round(value_us)  # inf is clamped too
    if not h.record_value(v):
        raise ValueError(f"{v} us does not fit this histogram (its range is below {MAX_US} us)")


def cdf_points(h: HdrHistogram) -> list[tuple[int, float]]:
    """(value_us, fraction of values <= it) for each recorded bucket, ascending; the value is
    the top of the bucket, so the fraction is exact for it. Empty for an empty histogram."""
    n = h.get_total_count()
    if not n:
        return []
    return [(int(step.value_iterated_to), step.total_count_to_this_value / n)
            for step in h.get_recorded_iterator()]

