"""PNG plots of load-test results (matplotlib, imported lazily: only plotting needs it).

One result: latency percentiles over time (per second of the schedule) and the latency-by-
percentile curve (HDR style: the x axis stretches the tail, 90 / 99 / 99.9 / 99.99).
Several results (a rising-rate sweep): p50/p99/p99.9 against the offered rate, and the
percentile curves of every rate on one chart.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from sim.latency import cdf_points
from sim.loadtest import LoadResult

TAIL_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


class PlotError(RuntimeError):
    """Plotting is unavailable or failed."""


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotError(
            "--plot needs matplotlib: pip install matplotlib (or drop --plot)"
        ) from exc
    return plt


def _percentile_curve(ax: Any, h: HdrHistogram, label: str) -> None:
    pts = cdf_points(h)
    if not pts:
        return
    values = np.array([v for v, _ in pts]) / 1000.0
    frac = np.array([f for _, f in pts])
    # x = 1 / (1 - fraction), capped so the last point (fraction 1) stays on the chart
    x = 1.0 / np.maximum(1.0 - frac, 1.0 / (10 * h.get_total_count()))
    ax.step(x, values, where="post", label=label)


def _style_percentile_axis(ax: Any, max_count: int) -> None:
    ax.set_xscale("log")
    ticks = [t for t in TAIL_TICKS if 1 / (1 - t / 100.0) <= 10 * max(max_count, 1)]
    ax.set_xticks([1 / (1 - t / 100.0) for t in ticks])
    ax.set_xticklabels([f"{t:g}%" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, alpha=0.3)


def plot_results(results: Sequence[LoadResult], path: str | Path, title: str = "") -> Path:
    """Write the PNG for one result or a sweep of results; returns the path."""
    if not results:
        raise PlotError("nothing to plot")
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    first = results[0]
    if len(results) == 1:
        secs = np.arange(len(first.per_second)) + 0.5  # the middle of each second
        for q, name in ((50.0, "p50"), (99.0, "p99")):
            left.plot(secs, [h.get_value_at_percentile(q) / 1000 for h in first.per_second], label=name)
        left.plot(secs, [h.get_max_value() / 1000 for h in first.per_second], label="max", alpha=0.6)
        left.set_xlabel("second of the schedule")
        left.set_ylabel("latency (ms)")
        left.set_yscale("log")
        left.set_title("latency over time")
        _percentile_curve(right, first.latency, f"{first.target_rps:g} rps")
    else:
        rates = [r.target_rps for r in results]
        for q, name in ((50.0, "p50"), (99.0, "p99"), (99.9, "p99.9")):
            left.plot(rates, [r.percentile_ms(q) for r in results], marker="o", label=name)
        left.set_xlabel("offered rate (requests/s)")
        left.set_ylabel("latency (ms)")
        left.set_yscale("log")
        left.set_title("latency against offered rate")
        for r in results:
            _percentile_curve(right, r.latency, f"{r.target_rps:g} rps")
    left.grid(True, alpha=0.3)
    left.legend()
    _style_percentile_axis(right, max(r.latency.get_total_count() for r in results))
    right.set_yscale("log")
    right.set_title("latency by percentile (from the scheduled send time)")
    right.legend()
    fig.suptitle(title or f"{first.target} @ {first.address}, open loop")
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out, write (100 dpi, folders made) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out, dpi=100)
    finally:
        plt.close(fig)
    return out
