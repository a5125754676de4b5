"""Position debiasing, PAL-style (Guo et al., RecSys 2019, "PAL: a position-bias aware
learning framework for CTR prediction in live recommender systems").

A shown item's observed event probability factorises into the chance that the shopper
examines its position and the chance of the event once examined::

    p_observed(event | x, pos) = examine(pos) · p(event | x, at the top),   examine(0) = 1

for every head: clicks directly, carts and purchases because they need a click (the ESMM heads
are all over the impression space). The simulator's truth has exactly this form
(``p_click = examine(pos) · sigmoid(u)``, ``sim.world``).

* ``PositionBias``: one learned log examination probability per position; position 0 is
  pinned at log 1 = 0, position k > 0 is ``-softplus(θ_k)`` (so examine ≤ 1); positions
  ``>= max_positions`` share the last one. ``models.ranker_fit.fit`` starts it at the
  observed click-rate ratios (``click_rate_ratio``: right for a random order; under a ranked
  one they also carry what was shown where, which the joint fit separates) and steps it with
  its own, larger learning rate (``RankerTrainConfig.position_lr``).
* ``PositionAware``: (ranker, PositionBias) as ONE module (so DDP syncs both):
  ``forward(sparse, dense, position) = ranker(sparse, dense) + log_examine(position)``, the
  observed log-probabilities the loss of ``models.ranker_fit.fit`` is taken on.
* Served, the ranker alone (no position input: ``models.ranker_runtime`` and the fused model
  are unchanged) gives "the probability if shown at the top".
* ``calibrate_and_evaluate_shown``: each head's calibrator is fitted so that calibrated
  top-slot prediction · examine(pos) matches the validation labels (``Platt.fit_examined``),
  so served at position 0 (examine = 1) the calibrated output is the top-slot probability;
  test metrics the same way (calibrated prediction · examine(pos) against the observed
  labels), comparable with a model trained without debiasing.
* ``ndcg_per_request`` and ``bootstrap_mean_diff``: ranking quality against the simulator's
  hidden position-free relevance (``recsys.bench.position_debias``, ``tests``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import calibration as C
from models.deepfm import TASKS, DeepFM
from models.mmoe import MMoE
from models.ranker_eval import head_metrics, predict_raw
from models.ranking_dataset import RankingData

INITIAL_EXAMINE = 0.9  # where the positions k > 0 start: almost no position effect


class PositionBias(nn.Module):
    """Learned examination log-probabilities: ``log_examine(position [B]) -> [B, 1]``."""

    def __init__(self, max_positions: int = 20) -> None:
        super().__init__()
        if max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {max_positions}")
        self.max_positions = max_positions
        # θ for positions 1..max-1 (position 0 has none): log examine = -softplus(θ)
        start = math.log(math.expm1(-math.log(INITIAL_EXAMINE)))  # softplus(start) = -log 0.9
        self.theta = nn.Parameter(torch.full((max_positions - 1,), start))  # [M-1]

    @torch.no_grad()
    def start_at(self, examine: npt.ArrayLike) -> None:
        """Set examine(1..) to ``examine[1:]`` (clipped into [0.01, 0.99]; entry 0 is ignored,
        positions beyond the array keep the last value)."""
        e = np.asarray(examine, dtype=np.float64)[1 : self.max_positions]
        if e.size == 0:
            return
        e = np.clip(np.append(e, np.full(self.max_positions - 1 - e.size, e[-1])), 0.01, 0.99)
        self.theta.copy_(torch.from_numpy(np.log(np.expm1(-np.log(e)))))  # softplus(θ) = -log e

    def curve(self) -> Tensor:
        """log examine for positions 0..max-1 [M]; entry 0 is exactly 0."""
        return torch.cat([self.theta.new_zeros(1), -F.softplus(self.theta)])

    def log_examine(self, position: Tensor) -> Tensor:
        """[B] int64 shown positions (0 = top) -> [B, 1] log examination probabilities."""
        pos = position.long().clamp(0, self.max_positions - 1)  # [B]
        return self.curve()[pos].unsqueeze(1)  # [B, 1]

    @torch.no_grad()
    def examine_at(self, position: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """examine(pos) for numpy positions [n] -> [n] (float64, on the CPU)."""
        pos = torch.from_numpy(np.asarray(position, dtype=np.int64)).to(self.theta.device)
        return self.log_examine(pos)[:, 0].double().exp().cpu().numpy()

    @torch.no_grad()
    def examination(self) -> list[float]:
        """The learned curve examine(0..max-1) (examine(0) = 1)."""
        return [float(x) for x in self.curve().double().exp().cpu()]


class PositionAware(nn.Module):
    """A ranker trained with its shown position: observed log-probabilities [B, T]."""

    def __init__(self, ranker: DeepFM | MMoE, bias: PositionBias) -> None:
        super().__init__()
        self.ranker = ranker
        self.bias = bias

    def forward(self, sparse: Tensor, dense: Tensor, position: Tensor) -> Tensor:
        # [B, T] position-free log-probs + [B, 1] log examine, broadcast over every head
        return self.ranker(sparse, dense) + self.bias.log_examine(position)


def shown_predictions(model: DeepFM | MMoE, bias: PositionBias, data: RankingData,
                      device: torch.device) -> npt.NDArray[np.float64]:
    """Uncalibrated probabilities [n, T] at the shown positions: top-slot · examine(pos)."""
    return predict_raw(model, data, device) * bias.examine_at(data.position)[:, None]


def report(bias: PositionBias | None, train_position: npt.NDArray[np.int64]) -> dict[str, Any]:
    """The training report's ``position_debias`` entry: the learned examination curve and how
    many training rows each position had (a position without rows keeps its start value)."""
    if bias is None:
        return {"enabled": False}
    rows = np.bincount(np.clip(train_position, 0, bias.max_positions - 1), minlength=bias.max_positions)
    return {"enabled": True, "max_positions": bias.max_positions,
            "examination": [round(x, 5) for x in bias.examination()],
            "train_rows_per_position": [int(r) for r in rows]}


def calibrate_and_evaluate_shown(model: DeepFM | MMoE, bias: PositionBias, valid: RankingData,
                                 test: RankingData, device: torch.device, method: str
                                 ) -> tuple[dict[str, C.Calibrator], dict[str, Any], dict[str, Any]]:
    """``models.ranker_eval.calibrate_and_evaluate`` for a debiased model. Each head's
    calibrator maps a top-slot prediction to a top-slot probability such that, times
    examine(pos), it is calibrated where the item was shown (``Platt.fit_examined`` on valid's
    top-slot predictions, labels and examine(pos); ``method="none"`` keeps the raw outputs).
    Fitting a calibrator on the shown predictions (top-slot · examine) and serving it on
    top-slot ones would not be: the map is not linear. Test metrics at the shown positions:
    calibrated top-slot prediction · examine(pos) against the observed labels."""
    ev, et = bias.examine_at(valid.position), bias.examine_at(test.position)  # [n_valid], [n_test]
    top_v, top_t = predict_raw(model, valid, device), predict_raw(model, test, device)  # [n, T]
    cals: dict[str, C.Calibrator] = {}
    heads: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for j, t in enumerate(model.config.tasks):
        c = TASKS.index(t)
        cals[t] = C.Identity() if method == "none" else C.Platt.fit_examined(
            top_v[:, j], valid.labels[:, c], ev)
        raw, cal = top_t[:, j] * et, cals[t].predict(top_t[:, j]) * et
        y = test.labels[:, c]
        heads[t] = {"raw": head_metrics(y, raw), "calibrated": head_metrics(y, cal),
                    "calibrator": cals[t].method + " (examined)", "at": "shown positions"}
        curves[t] = {"raw": C.reliability_curve(y, raw, 15), "calibrated": C.reliability_curve(y, cal, 15)}
    return cals, heads, curves


# --- ranking against the hidden truth ---------------------------------------------------------


def ndcg_per_request(request: npt.NDArray[np.int64], score: npt.NDArray[Any], gain: npt.NDArray[Any],
                     k: int = 10) -> npt.NDArray[np.float64]:
    """NDCG@k of each request's rows ordered by ``score`` (highest first) with graded ``gain``
    (linear: DCG = Σ gain / log2(rank + 2)); one value per request in ``np.unique`` order,
    NaN where every gain is 0. Ties in ``score`` keep the rows' order."""
    req, score, gain = np.asarray(request), np.asarray(score, np.float64), np.asarray(gain, np.float64)
    uniq, inv = np.unique(req, return_inverse=True)

    def dcg(key: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        order = np.lexsort((np.arange(key.size), -key, inv))  # by request, then key descending
        g, r = inv[order], gain[order]
        start = np.searchsorted(g, np.arange(uniq.size))  # [R] first row of each request
        rank = np.arange(g.size) - start[g]  # [n] 0-based rank inside the request
        disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
        return np.bincount(g, weights=r * disc, minlength=uniq.size).astype(np.float64)  # [R]

    ideal = dcg(gain)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg(score) / ideal, np.nan)


def bootstrap_mean_diff(a: npt.NDArray[Any], b: npt.NDArray[Any], n: int = 1000, seed: int = 0
                        ) -> dict[str, list[float]]:
    """Paired bootstrap over requests of per-request values ``a`` and ``b`` [R]: 95% intervals
    of mean(a) - mean(b) and of mean(a) / mean(b)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    pick = np.random.default_rng(seed).integers(0, a.size, (n, a.size))  # [n, R]
    ma, mb = a[pick].mean(1), b[pick].mean(1)  # [n]
    return {"diff_ci95": [float(x) for x in np.percentile(ma - mb, [2.5, 97.5])],
            "ratio_ci95": [float(x) for x in np.percentile(ma / mb, [2.5, 97.5])]}


def click_rate_ratio(position: npt.NDArray[np.int64], click: npt.NDArray[Any], max_positions: int
                     ) -> npt.NDArray[np.float64]:
    """Observed click rate at each position / the rate at position 0 [max_positions]: the
    examination curve if the shown order were random (a start for ``PositionBias``; under a
    ranked order it also carries the relevance of what is shown where, which training then
    separates). Positions without rows or clicks take the previous value."""
    pos = np.clip(np.asarray(position), 0, max_positions - 1)
    shown = np.bincount(pos, minlength=max_positions).astype(np.float64)
    clicks = np.bincount(pos, weights=np.asarray(click, np.float64), minlength=max_positions)
    rate = np.divide(clicks, shown, out=np.full(max_positions, np.nan), where=shown > 0)
    if not rate[0] > 0:
        return np.ones(max_positions)
    ratio = rate / rate[0]
    for k in range(1, max_positions):
        if not ratio[k] > 0:
            ratio[k] = ratio[k - 1]
    return ratio
