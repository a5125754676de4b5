"""Evaluation of a trained ranker: uncalibrated head probabilities, per-head calibrators
fitted on the validation split with test metrics before / after calibration (AUC, log loss,
ECE) and reliability curves, and a paired bootstrap of AUC differences over whole requests."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models import calibration as C
from models import offline_metrics as metrics
from models.deepfm import TASKS, DeepFM, RankerConfig
from models.mmoe import MMoE
from models.ranking_dataset import RankingData


@torch.no_grad()
def predict_raw(model: nn.Module, data: RankingData, device: torch.device, batch: int = 8192
                ) -> npt.NDArray[np.float64]:
    """Uncalibrated probabilities [n, T] of the model's heads."""
    model.eval()
    out = []
    for s in range(0, len(data), batch):
        sp = torch.from_numpy(data.sparse[s : s + batch]).to(device)
        dn = torch.from_numpy(data.dense[s : s + batch]).to(device)
        out.append(model(sp, dn).double().exp().cpu().numpy())
    n_t = len(getattr(model, "config", RankerConfig()).tasks)
    return np.concatenate(out) if out else np.zeros((0, n_t))


def head_metrics(y: npt.NDArray[Any], p: npt.NDArray[Any]) -> dict[str, float]:
    out = C.summary(y, p)
    out["auc"] = metrics.auc(y, p) if 0 < y.sum() < y.size else math.nan
    return out


def paired_bootstrap(y: npt.NDArray[Any], a: npt.NDArray[Any], b: npt.NDArray[Any],
                     groups: npt.NDArray[np.int64], n: int = 200, seed: int = 0) -> list[float]:
    """95% interval of AUC(a) - AUC(b) over bootstrap resamples of whole requests."""
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = np.argsort(inv, kind="stable")
    starts = np.searchsorted(inv[members], np.arange(uniq.size))
    sizes = np.diff(np.append(starts, inv.size))
    diffs = []
    for _ in range(n):
        pick = rng.integers(0, uniq.size, uniq.size)
        rows = np.concatenate([members[starts[g] : starts[g] + sizes[g]] for g in pick])
        if 0 < y[rows].sum() < rows.size:
            diffs.append(metrics.auc(y[rows], a[rows]) - metrics.auc(y[rows], b[rows]))
    return [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]


def calibrate_and_evaluate(model: DeepFM | MMoE, valid: RankingData, test: RankingData,
                           device: torch.device, method: str
                           ) -> tuple[dict[str, C.Calibrator], dict[str, Any], dict[str, Any]]:
    """Calibrators fitted on valid; test metrics before/after; reliability data for plots."""
    pv, pt = predict_raw(model, valid, device), predict_raw(model, test, device)
    cals: dict[str, C.Calibrator] = {}
    heads: dict[str, Any] = {}
    curves: dict[str, Any] = {}
    for j, t in enumerate(model.config.tasks):
        c = TASKS.index(t)
        cals[t] = C.fit_calibrator(pv[:, j], valid.labels[:, c], method)
        raw, cal = pt[:, j], cals[t].predict(pt[:, j])
        y = test.labels[:, c]
        heads[t] = {"raw": head_metrics(y, raw), "calibrated": head_metrics(y, cal),
                    "calibrator": cals[t].method}
        curves[t] = {"raw": C.reliability_curve(y, raw, 15), "calibrated": C.reliability_curve(y, cal, 15)}
    return cals, heads, curves
