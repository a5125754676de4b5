"""Delayed-purchase corrections, so CVR is not biased down (see ``features.labels``).

A purchase can follow its impression by days. A trainer that reads the label join's output at
time ``cutoff`` sees a purchase only if ``impression + delay <= cutoff``; recent impressions
whose purchase is still to come look like negatives ("fake negatives"), so a naive estimate of
the conversion rate is biased DOWN, the more so the more recent the data.

With ``F`` = the delay CDF and ``e`` = elapsed time since the impression at the cutoff,
``P(observed | x, e) = p(x)·F(e)``. Corrections here:

* **DFM likelihood with a known delay distribution** (Chapelle, KDD 2014, with the delay model
  fitted separately): maximise ``Σ y·log(p·F(e)) + (1 - y)·log(1 - p·F(e))``.
  ``delayed_nll`` is the per-example loss for a model's log-probability; ``dfm_rate`` the
  constant-rate MLE. ``F`` is estimated from *matured* impressions (older than the attribution
  window, so every delay is known): ``DelayCDF.from_matured``.
* **Ratio estimator**: ``Σ y_obs / Σ F(e)`` (unbiased for a rate independent of ``e``).
* **Fake-negative weighting** (FNW, Ktena et al., RecSys 2019): the streaming recipe the label
  join supports: every impression is ingested at once as a negative (version 1) and a delayed
  purchase is ingested again as a positive (the correction). On that stream the positive share
  is ``b = p/(1+p)``; importance weights ``(1+p)`` for positives and ``(1-p)(1+p)`` for
  negatives (``p`` = the model's own prediction, no gradient) make the loss unbiased for ``p``.
  ``fnw_stream`` builds that stream from observed labels, ``fnw_nll`` is the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from models.deepfm import log1mexp

FloatArray = npt.NDArray[np.float64]
LABEL_MODES = ("final", "naive", "dfm", "fnw")


@dataclass(frozen=True)
class DelayCDF:
    """Empirical CDF of conversion delays (ms), from conversions whose delay is fully known."""

    delays_ms: tuple[float, ...]  # sorted

    @classmethod
    def fit(cls, delays_ms: npt.ArrayLike) -> DelayCDF:
        d = np.sort(np.asarray(delays_ms, dtype=np.float64))
        if d.size == 0:
            raise ValueError("no conversion delays to fit a delay distribution")
        return cls(tuple(d.tolist()))

    @classmethod
    def from_matured(cls, times: npt.ArrayLike, y_obs: npt.ArrayLike, delays_ms: npt.ArrayLike,
                     cutoff_ms: int, window_ms: int) -> DelayCDF:
        """Fit on impressions at least ``window_ms`` older than the cutoff: every conversion of
        theirs inside the attribution window is already observed, so the delays are unbiased."""
        t, y, d = (np.asarray(a) for a in (times, y_obs, delays_ms))
        matured = (t <= cutoff_ms - window_ms) & (y > 0)
        if matured.sum() < 20:
            raise ValueError(f"only {int(matured.sum())} matured conversions (impressions older than "
                             f"{window_ms / 86_400_000:.1f} days): train on a longer history")
        return cls.fit(d[matured])

    def __call__(self, elapsed_ms: npt.ArrayLike) -> FloatArray:
        d = np.asarray(self.delays_ms)
        return np.searchsorted(d, np.asarray(elapsed_ms, dtype=np.float64), side="right") / d.size

    def to_dict(self, n: int = 101) -> dict[str, list[float]]:
        """Quantiles (compact; enough to rebuild an approximate CDF)."""
        return {"quantiles_ms": np.quantile(np.asarray(self.delays_ms), np.linspace(0, 1, n)).tolist()}


def naive_rate(y_obs: npt.ArrayLike) -> float:
    return float(np.mean(np.asarray(y_obs, dtype=np.float64)))


def ratio_rate(y_obs: npt.ArrayLike, cdf_e: npt.ArrayLike) -> float:
    """``Σ y_obs / Σ F(e)``: observed conversions over the expected observable fraction."""
    return float(np.sum(np.asarray(y_obs, dtype=np.float64)) / np.sum(np.asarray(cdf_e, dtype=np.float64)))


def dfm_rate(y_obs: npt.ArrayLike, cdf_e: npt.ArrayLike, iters: int = 100) -> float:
    """Constant-rate MLE under ``P(y_obs = 1) = p·F(e)`` (bisection on the score)."""
    y = np.asarray(y_obs, dtype=np.float64)
    f = np.clip(np.asarray(cdf_e, dtype=np.float64), 1e-9, 1.0)
    pos, fneg = y.sum(), f[y == 0]
    lo, hi = 1e-9, 1.0 - 1e-9
    for _ in range(iters):
        p = 0.5 * (lo + hi)
        score = pos / p - np.sum(fneg / (1.0 - p * fneg))
        lo, hi = (p, hi) if score > 0 else (lo, p)
    return 0.5 * (lo + hi)


def bce(logp: Tensor, y: Tensor) -> Tensor:
    """Per-example binary cross-entropy from a log-probability."""
    return -(y * logp + (1.0 - y) * log1mexp(logp))


def delayed_nll(logp: Tensor, y_obs: Tensor, cdf_e: Tensor) -> Tensor:
    """Per-example DFM loss: the observed label is Bernoulli(p·F(e)). ``logp`` = log p(x)."""
    logq = logp + torch.log(cdf_e.clamp_min(1e-6))
    return bce(logq, y_obs)


def fnw_nll(logp: Tensor, y: Tensor) -> Tensor:
    """Per-example fake-negative-weighted loss on the FNW stream (Ktena et al. 2019, eq. 6)."""
    p = logp.detach().exp()
    w_pos, w_neg = 1.0 + p, (1.0 - p) * (1.0 + p)
    return -(w_pos * y * logp + w_neg * (1.0 - y) * log1mexp(logp))


def fnw_stream(y_obs: npt.ArrayLike) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32],
                                              npt.NDArray[np.bool_]]:
    """(row index, label, is_duplicate) of the FNW stream: every row once as a negative, every
    observed positive once more as a positive."""
    y = np.asarray(y_obs) > 0
    n = y.size
    pos = np.flatnonzero(y)
    idx = np.concatenate([np.arange(n), pos]).astype(np.int64)
    lab = np.concatenate([np.zeros(n, np.float32), np.ones(pos.size, np.float32)])
    dup = np.concatenate([np.zeros(n, bool), np.ones(pos.size, bool)])
    return idx, lab, dup


def training_labels(labels: npt.NDArray[np.float32], times: npt.NDArray[np.int64],
                    purchase_delay_ms: npt.NDArray[np.int64], mode: str, window_ms: int
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.float32],
                               npt.NDArray[np.float32], dict[str, object]]:
    """Rows and labels a trainer uses at the cutoff = the latest impression time:
    (row index, labels [m, 3], per-head weights [m, 3], F(elapsed) [m], info).

    ``final``: the eventual labels. ``naive``: purchases not yet happened at the cutoff are
    negatives. ``dfm``: naive labels + F(elapsed) for ``delayed_nll`` (F from matured
    impressions). ``fnw``: the FNW stream (duplicate positives teach only the purchase head).
    """
    if mode not in LABEL_MODES:
        raise ValueError(f"label mode must be one of {LABEL_MODES}, not {mode!r}")
    n = labels.shape[0]
    info: dict[str, object] = {"labels": mode}
    y, w = labels.astype(np.float32).copy(), np.ones((n, 3), np.float32)
    cdf, idx = np.ones(n, np.float32), np.arange(n, dtype=np.int64)
    if mode == "final" or n == 0:
        return idx, y, w, cdf, info
    cutoff = int(times.max())
    y_obs = ((y[:, 2] > 0) & (times + purchase_delay_ms <= cutoff)).astype(np.float32)
    info.update(cutoff_ms=cutoff, purchases_final=int(y[:, 2].sum()), purchases_observed=int(y_obs.sum()))
    y[:, 2] = y_obs
    if mode == "dfm":
        # matured = older than the window; a short history settles for half of it (the rare
        # delays longer than that are missed, so F is slightly over-estimated)
        mature = min(window_ms, (cutoff - int(times.min())) // 2)
        delay = DelayCDF.from_matured(times, y_obs, purchase_delay_ms, cutoff, mature)
        cdf = delay(cutoff - times).astype(np.float32)
        info["maturity_h"] = round(mature / 3.6e6, 1)
        info["delay_quantiles_h"] = [round(q / 3.6e6, 2) for q in delay.to_dict(5)["quantiles_ms"]]
    elif mode == "fnw":
        idx, lab, dup = fnw_stream(y_obs)
        y, w, cdf = y[idx], w[idx], cdf[idx]
        y[:, 2] = lab
        w[dup, :2] = 0.0
        info["fnw_rows"] = int(idx.size)
    return idx, y, w, cdf, info
