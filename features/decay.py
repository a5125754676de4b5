"""Forward-decayed counts, the time weighting of every feature (dataflow, scorer, offline builder).

Decayed counts use *forward decay* kept in log2 space: a count decayed with half-life h is
``2 ** (s - (now - L) / h)`` where ``s = log2(sum_i w_i * 2 ** ((t_i - L) / h))`` and L is a
fixed landmark. Adding an event is a ``logaddexp2``; the stored score never needs rewriting
as time passes, order of arrival does not matter (late events land correctly), and ranking
by ``s`` ranks by the decayed count at any common "now".
"""

from __future__ import annotations

import math

LANDMARK_MS = 1_700_000_000_000  # 2023-11-14; any fixed instant works


def decay_exponent(ts_ms: int, half_life_s: float) -> float:
    return (ts_ms - LANDMARK_MS) / 1000.0 / half_life_s


def decay_add(log_score: float | None, ts_ms: int, half_life_s: float, weight: float = 1.0) -> float:
    """Add one weighted event at ``ts_ms`` to a forward-decayed log2 score."""
    x = decay_exponent(ts_ms, half_life_s) + math.log2(weight)
    if log_score is None:
        return x
    hi, lo = (log_score, x) if log_score >= x else (x, log_score)
    return hi + math.log2(1.0 + 2.0 ** (lo - hi))


def decayed_value(log_score: float | None, now_ms: int, half_life_s: float) -> float:
    """The decayed count at ``now_ms`` of a log2 forward-decayed score."""
    if log_score is None:
        return 0.0
    return float(2.0 ** (log_score - decay_exponent(now_ms, half_life_s)))
