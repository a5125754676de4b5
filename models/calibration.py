"""Post-hoc probability calibration per head, fitted on held-out data. Fitting uses scikit-learn
(imported inside the ``fit`` functions only); predicting is numpy, so the scorer, which rebuilds
calibrators from checkpoint dicts, never imports scikit-learn. The plots use matplotlib, imported
only when plotting.

* ``Platt``: ``p' = sigmoid(a·logit(p) + b)``, a logistic regression of the labels on the logit
  of the score (``sklearn.linear_model.LogisticRegression``, Newton-Cholesky, ``C = 1 / ridge``
  = 1e4: a tiny L2 on the slope so a separable head cannot diverge; the intercept is free).
  A single-class fitting set has no slope to fit: ``a = 1`` (the ranking is kept) and ``b``
  moves the mean logit to the observed rate (clipped into ``[eps, 1 - eps]``). Keeps the ranking.
* ``Isotonic``: the monotone step function minimising squared error
  (``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)``; tied scores
  are pooled first). Stored as its thresholds (``X_thresholds_``, ``y_thresholds_``: both ends
  of every block); predictions interpolate linearly between them (``np.interp``, as scikit-learn
  does), are constant beyond the ends, and are clipped into ``[eps, 1 - eps]``. Can create ties,
  so AUC may move slightly.
* ``fit_calibrator(p, y, "auto")`` cross-fits both on two time-ordered halves of the held-out
  set and keeps the one with the lower held-out log loss, then refits it on all of it.

Calibrators serialise to plain JSON-able dicts (``to_dict`` / ``calibrator_from_dict``) so they
travel inside the model checkpoint; the format is unchanged from the hand-written PAV / Newton
fitters (``{"method": "platt", "a", "b"}``, ``{"method": "isotonic", "x", "y"}``), so older
checkpoints load and predict as before. ECE is ``models.offline_metrics.ece`` (equal-width bins);
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

from models.offline_metrics import ece, log_loss

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
    def fit(cls, p: npt.ArrayLike, y: npt.ArrayLike, ridge: float = 1e-4) -> Platt:
        """Labels ``y`` in {0, 1}; ``ridge`` is the L2 weight on the slope (``C = 1 / ridge``)."""
        x = _logit(p).reshape(-1)
        t = np.asarray(y, dtype=np.float64).reshape(-1)
        if x.size == 0 or x.size != t.size:
            raise ValueError(f"Platt.fit needs as many labels as scores, got {t.size} and {x.size}")
        if t.min() == t.max():  # one class: no slope to fit; keep the ranking, match the rate
            return cls(1.0, float(_logit(t.mean()) - x.mean()))
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1.0 / ridge, solver="newton-cholesky", tol=1e-10, max_iter=100)
        lr.fit(x[:, None], t)
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    @classmethod
    def fit_examined(cls, p: npt.ArrayLike, y: npt.ArrayLike, examine: npt.ArrayLike,
                     ridge: float = 1e-4) -> Platt:
        """Platt for a position-debiased model: ``p`` are top-slot predictions, ``y`` labels
        observed at positions examined with probability ``examine``; fits ``a, b`` so that
        ``examine · sigmoid(a·logit(p) + b)`` is calibrated (maximum likelihood, L-BFGS, the
        same tiny ridge on the slope). Served at the top (examine = 1), ``predict`` is then a
        calibrated top-slot probability and ``predict · examine`` calibrated where it was shown
        (fitting on ``p · examine`` and scaling afterwards is not: the map is not linear)."""
        from scipy.optimize import minimize

        x = _logit(p).reshape(-1)
        t = np.asarray(y, dtype=np.float64).reshape(-1)
        e = np.clip(np.asarray(examine, dtype=np.float64).reshape(-1), EPS, 1.0)
        if x.size == 0 or not x.size == t.size == e.size:
            raise ValueError(f"fit_examined needs as many labels and examine values as scores, "
                             f"got {t.size}, {e.size} and {x.size}")
        if t.min() == t.max():
            return cls.fit(np.clip(np.asarray(p, dtype=np.float64) * e, EPS, 1 - EPS), t, ridge)

        def nll(w: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
            s = 1.0 / (1.0 + np.exp(-(w[0] * x + w[1])))  # [n] top-slot probability
            q = np.clip(e * s, EPS, 1 - EPS)  # [n] where shown
            dq = t / q - (1 - t) / (1 - q)  # d log-lik / dq
            dz = dq * e * s * (1 - s)  # d log-lik / dz
            loss = -float(np.sum(t * np.log(q) + (1 - t) * np.log(1 - q))) + ridge * w[0] ** 2
            grad = -np.array([float(dz @ x), float(dz.sum())]) + np.array([2 * ridge * w[0], 0.0])
            return loss, grad

        res = minimize(nll, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B")
        return cls(float(res.x[0]), float(res.x[1]))

    def predict(self, p: npt.ArrayLike) -> Array:
        z = self.a * _logit(p) + self.b
        return np.clip(1.0 / (1.0 + np.exp(-z)), EPS, 1 - EPS)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "a": self.a, "b": self.b}


@dataclass
class Isotonic:
    x: list[float]
    y: list[float]
    method: str = "isotonic"

    @classmethod
    def fit(cls, p: npt.ArrayLike, y: npt.ArrayLike) -> Isotonic:
        from sklearn.isotonic import IsotonicRegression

        pp = np.asarray(p, dtype=np.float64).reshape(-1)
        yy = np.asarray(y, dtype=np.float64).reshape(-1)
        ir = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(pp, yy)
        return cls([float(v) for v in ir.X_thresholds_], [float(v) for v in ir.y_thresholds_])

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
