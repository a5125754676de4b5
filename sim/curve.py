"""The learning curve's files: ``learning_curve.json`` and ``learning_curve.png``.

The curve itself (per sim hour: each arm's CTR with its user-clustered 95% CI, the model arm's
CTR ratio to ``oracle`` and ``popular``) is computed by the simulator's books
(``sim.stats.learning_curve``, the report's ``learning_curve``); this module only writes it
out. The plot has two panels: CTR per sim hour per arm, and the model arm's CTR ratios with
their CIs on a log scale (a dotted line at 1); hours with warm-up lists are shaded. matplotlib is imported
inside ``plot_learning_curve`` (Agg backend): only plotting needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.reports import write_json
from sim.plot import save_figure

JSON_NAME = "learning_curve.json"
PNG_NAME = "learning_curve.png"


Series = tuple[list[float], list[float], list[float], list[float]]


def _series(hours: list[dict[str, Any]], cell: Callable[[dict[str, Any]], dict[str, Any] | None],
            key: str) -> Series:
    """(x, value, lo, hi) of ``cell(row)[key]`` and its ``key + "_ci95"``, for the hours that have it."""
    x: list[float] = []
    v: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for row in hours:
        got = cell(row)
        if not got or key not in got:
            continue
        x.append(row["hour"] + 0.5)  # the middle of the hour
        v.append(got[key])
        lo.append(got[f"{key}_ci95"][0])
        hi.append(got[f"{key}_ci95"][1])
    return x, v, lo, hi


def plot_learning_curve(curve: dict[str, Any], path: Path, title: str = "") -> Path:
    """The PNG of a report's ``learning_curve``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours: list[dict[str, Any]] = curve.get("hours", [])
    arm = curve.get("arm", "model")
    arms = sorted({a for row in hours for a in row["arms"]})
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    warm = [row["hour"] for row in hours if row["warmup"]]
    for ax in (left, right):
        for j, h in enumerate(warm):
            ax.axvspan(h, h + 1, color="0.85", lw=0, label="warm-up" if j == 0 and ax is left else None)
    for name in arms:
        def arm_cell(row: dict[str, Any], name: str = name) -> dict[str, Any] | None:
            got: dict[str, Any] | None = row["arms"].get(name)
            return got if got and got["impressions"] else None

        x, v, lo, hi = _series(hours, arm_cell, "ctr")
        (line,) = left.plot(x, v, "o-", ms=3, label=name)
        left.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    left.set(xlabel="sim hour since the start", ylabel="CTR", title="CTR per sim hour (95% CI)")
    for base in curve.get("baselines", []):
        key = f"{arm}_vs_{base}"
        def ratio_cell(row: dict[str, Any], key: str = key) -> dict[str, Any] | None:
            return row.get(key)

        x, v, lo, hi = _series(hours, ratio_cell, "ctr_ratio")
        if x:
            (line,) = right.plot(x, v, "o-", ms=3, label=f"{arm} / {base}")
            right.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2, lw=0)
    right.axhline(1.0, color="k", ls=":", lw=1)
    right.set_yscale("log")  # the CIs are symmetric on the log scale
    right.set(xlabel="sim hour since the start", ylabel="CTR ratio (log scale)",
              title=f"{arm} CTR relative to {' and '.join(curve.get('baselines', []))} (95% CI)")
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title or "learning curve")
    return save_figure(fig, path)


def write_learning_curve(curve: dict[str, Any], out_dir: str | Path, title: str = "") -> list[Path]:
    """``learning_curve.json`` (the curve as given) and ``learning_curve.png`` in ``out_dir``."""
    out = Path(out_dir)
    return [write_json(out / JSON_NAME, curve), plot_learning_curve(curve, out / PNG_NAME, title)]
