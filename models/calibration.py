"""Post-hoc probability calibration per head, fitted on held-out data (numpy; the plots use
matplotlib, imported only when plotting).

* ``Platt``: ``p' = sigmoid(a·logit(p) + b)``, fitted by Newton's method on the log loss (with a
  tiny ridge so a separable or constant head cannot diverge). Keeps the ranking.
* ``Isotonic``: the monotone step function minimising squared error, by pool-adjacent-violators
  (PAV); predictions interpolate linearly between the ends of adjacent blocks (as scikit-learn
  does) and are clipped into ``[eps, 1 - eps]``. Can create ties, so AUC may move slightly.
* ``fit_calibrator(p, y, "auto")`` cross-fits both on two time-ordered halves of the held-out
  set and keeps the one with the lower held-out log loss, then refits it on all of it.

Calibrators serialise to plain JSON-able dicts (``to_dict`` / ``calibrator_from_dict``) so they
travel inside the model checkpoint. ECE is ``models.metrics.ece`` (equal-width bins);
``ece_adaptive`` (equal-mass bins) is reported too because with rare positives almost every
prediction falls into the first equal-width bin.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.metrics import ece, log_loss

Array = npt.NDArray[np.float64]
EPS = 1e-6

def _logit(p: npt.ArrayLike) -> Array:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


class Calibrator(Protocol):
    method: str

    def predict(self, p: npt.ArrayLike) -> Array: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class Identity:
    method: str = "none"

    def predict(self, p: npt.ArrayLike) -> Array:
        return np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method}


@dataclass
class Platt:
    a: float = 1.0
    b: float = 0.0
    method: str = "platt"

    @classmethod
    def fit(cls, p: npt.ArrayLike, y: npt.ArrayLike, ridge: float = 1e-4, iters: int = 50) -> Platt:
        x = _logit(p)
        t = np.asarray(y, dtype=np.float64)
        a, b = 1.0, 0.0
        for _ in range(iters):
            q = 1.0 / (1.0 + np.exp(-(a * x + b)))
            r = q - t
            w = q * (1 - q)
            g = np.array([np.dot(r, x) + ridge * (a - 1.0), r.sum() + ridge * b])
            h = np.array([[np.dot(w, x * x) + ridge, np.dot(w, x)], [np.dot(w, x), w.sum() + ridge]])
            step = np.linalg.solve(h, g)
            a, b = a - float(step[0]), b - float(step[1])
            if np.max(np.abs(step)) < 1e-9:
                break
        return cls(a, b)

    def predict(self, p: npt.ArrayLike) -> Array:
        z = self.a * _logit(p) + self.b
        return np.clip(1.0 / (1.0 + np.exp(-z)), EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}


def pav(y: npt.ArrayLike, w: npt.ArrayLike | None = None) -> tuple[Array, Array, npt.NDArray[np.int64]]:
    """Pool-adjacent-violators on values already sorted by score: (block means, block weights,
    block start indices). The block means are non-decreasing."""
    yy = np.asarray(y, dtype=np.float64)
    ww = np.ones_like(yy) if w is None else np.asarray(w, dtype=np.float64)
    means: list[float] = []
    weights: list[float] = []
    starts: list[int] = []
    for i in range(yy.size):
        m, wt, s = float(yy[i]), float(ww[i]), i
        while means and means[-1] >= m:  # merge ties too: fewer, wider blocks
            pm, pw = means.pop(), weights.pop()
            s = starts.pop()
            m = (pm * pw + m * wt) / (pw + wt)
            wt += pw
        means.append(m)
        weights.append(wt)
        starts.append(s)
    return np.array(means), np.array(weights), np.array(starts, dtype=np.int64)


@dataclass
class Isotonic:
    x: list[float]
    y: list[float]
    method: str = "isotonic"

    @classmethod
    def fit(cls, p: npt.ArrayLike, y: npt.ArrayLike) -> Isotonic:
        pp = np.asarray(p, dtype=np.float64)
        order = np.argsort(pp, kind="mergesort")
        ps, ys = pp[order], np.asarray(y, dtype=np.float64)[order]
        means, _, starts = pav(ys)
        ends = np.append(starts[1:], ps.size) - 1
        xs, vs = [], []
        for m, s, e in zip(means, starts, ends, strict=True):
            xs += [float(ps[s]), float(ps[e])]  # both ends of the block: a step, linear between
            vs += [float(m), float(m)]
        return cls(xs, vs)

    def predict(self, p: npt.ArrayLike) -> Array:
        out = np.interp(np.asarray(p, dtype=np.float64), self.x, self.y)
        return np.clip(out, EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "x": list(self.x), "y": list(self.y)}


def _fit(method: str, p: npt.ArrayLike, y: npt.ArrayLike) -> Calibrator:
    if method == "platt":
        return Platt.fit(p, y)
    if method == "isotonic":
        return Isotonic.fit(p, y)
    if method == "none":
        return Identity()
    raise ValueError(f"unknown calibration method {method!r}")


def fit_calibrator(p: npt.ArrayLike, y: npt.ArrayLike, method: str = "auto") -> Calibrator:
    """Fit on held-out (p, y) in time order. ``auto``: pick Platt or isotonic by 2-fold
    time-ordered cross-fitting (held-out log loss), then refit on everything."""
    pp, yy = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if method != "auto":
        return _fit(method, pp, yy)
    h = pp.size // 2
    if h < 50 or yy[:h].sum() < 5 or yy[h:].sum() < 5:  # too few positives to cross-fit
        return Platt.fit(pp, yy)
    scores = {}
    for m in ("platt", "isotonic"):
        a = log_loss(yy[h:], _fit(m, pp[:h], yy[:h]).predict(pp[h:]))
        b = log_loss(yy[:h], _fit(m, pp[h:], yy[h:]).predict(pp[:h]))
        scores[m] = a + b
    return _fit(min(scores, key=lambda m: scores[m]), pp, yy)


def calibrator_from_dict(d: Mapping[str, Any]) -> Calibrator:
    method = d.get("method")
    if method == "platt":
        return Platt(float(d["a"]), float(d["b"]))
    if method == "isotonic":
        return Isotonic([float(v) for v in d["x"]], [float(v) for v in d["y"]])
    if method == "none":
        return Identity()
    raise ValueError(f"unknown calibrator {d!r}")


def ece_adaptive(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> float:
    """ECE over equal-mass bins (sorted by p, ``n_bins`` slices of equal size)."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(pp, kind="mergesort")
    total = 0.0
    for idx in np.array_split(order, n_bins):
        if idx.size:
            total += idx.size / yy.size * abs(yy[idx].mean() - pp[idx].mean())
    return float(total)


def reliability_curve(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10
                      ) -> tuple[Array, Array, npt.NDArray[np.int64]]:
    """(mean predicted, observed rate, count) per equal-mass bin, for reliability plots."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    order = np.argsort(pp, kind="mergesort")
    parts = [idx for idx in np.array_split(order, n_bins) if idx.size]
    return (np.array([pp[i].mean() for i in parts]), np.array([yy[i].mean() for i in parts]),
            np.array([i.size for i in parts], dtype=np.int64))


def summary(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """ECE (equal-width, equal-mass), log loss, mean predicted vs observed rate."""
    yy, pp = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    return {"ece": ece(yy, pp), "ece_adaptive": ece_adaptive(yy, pp), "logloss": log_loss(yy, pp),
            "mean_p": float(pp.mean()), "rate": float(yy.mean()),
            "ratio": float(pp.mean() / yy.mean()) if yy.mean() > 0 else math.nan}


def plot_curves(out_dir: Path, name: str, history: list[dict[str, float]], curves: Mapping[str, Any]
                ) -> list[str]:
    """``loss.png`` (train / validation loss per epoch) and ``reliability.png`` (per head, raw
    and calibrated, from ``reliability_curve``) in ``out_dir``; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [h["epoch"] for h in history]
    ax.plot(ep, [h["train_loss"] for h in history], "o-", label="train loss (sum of heads)")
    if history and "valid_loss" in history[0]:
        ax.plot(ep, [h["valid_loss"] for h in history], "s-", label="valid log loss (sum of heads)")
    ax.set(xlabel="epoch", ylabel="loss", title=f"{name}: loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=100)
    files.append("loss.png")
    fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 4), squeeze=False)
    for ax, (t, cur) in zip(axes[0], curves.items(), strict=True):
        hi = max(float(np.max(cur["raw"][0])), float(np.max(cur["raw"][1])), 1e-3)
        ax.plot([0, hi], [0, hi], "k:", lw=1, label="perfect")
        for kind, style in (("raw", "o--"), ("calibrated", "s-")):
            mp, rate, _ = cur[kind]
            ax.plot(mp, rate, style, label=kind)
        ax.set(xlabel="mean predicted", ylabel="observed rate", title=f"{name}: {t} (test, equal-mass bins)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "reliability.png", dpi=100)
    plt.close("all")
    files.append("reliability.png")
    return files


def plot_head_auc(out_dir: Path, name: str, heads: Mapping[str, Any]) -> str:
    """``auc.png``: test AUC per head (from ``ranker_eval.calibrate_and_evaluate``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(heads)
    aucs = [float(heads[t]["raw"]["auc"]) for t in names]
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2, 3.5))
    bars = ax.bar(names, aucs, color="#4c72b0")
    ax.bar_label(bars, fmt="%.3f")
    ax.axhline(0.5, color="k", lw=1, ls=":", label="random")
    ax.set(ylim=(0.4, 1.0), ylabel="test AUC", title=f"{name}: AUC per head")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(out_dir / "auc.png", dpi=100)
    plt.close(fig)
    return "auc.png"
