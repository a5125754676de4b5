"""The promotion gate of the retraining loop: may a newly trained ranker replace the served one?

Pure numpy (plus ``models.offline_metrics``): the caller scores the newest held-out time slice
with both models and hands in arrays; nothing here loads a model or touches the registry.

* **Ranking** (``paired_ndcg``): NDCG@k of the served lists. The rows of one request
  (``RankingData.request``) are the slate that was shown; each model re-ranks it by its value
  (the scorer's ``online.ranking.value_scores``; ties keep the logged order) and the order is
  scored against graded relevance, the strongest action on the item: purchase 3, cart 2,
  click 1, none 0 (``GRADES``), gain ``2^rel - 1`` (1, 3, 7), discount ``1/log2(rank + 1)``,
  normalised by the ideal order of the same slate. Mean over the requests with a positive;
  the difference new - current gets a paired bootstrap 95% interval over requests.
* **Calibration** (``head_ece``): ECE (``offline_metrics.ece``, 10 equal-width bins) per head
  of the new model on the slice. A position-debiased model predicts the top-slot probability,
  so its ECE is taken on ``prediction · examine(position)`` (``examine``, default 1); the
  purchase head can also be scaled by ``observable`` = F(elapsed), the share of purchases
  already seen (delayed feedback), so a model that predicts the eventual rate is not judged
  against labels that are still incomplete. ``ece_noise_floor`` (reported, not subtracted) is
  the ECE a perfectly calibrated model with these predictions shows on this many rows: when
  it is near the threshold, the slice is too small to verify calibration.
* **Decision** (``decide``): promote iff at least ``min_requests`` slates have a positive,
  ``NDCG(new) > NDCG(current) + min_gain`` (and, with
  ``require_ci``, the interval's lower end > 0) and every head of the new model has
  ``ECE < max_ece``. The record says which test failed and by how much.
* **Off-policy** (``snips``, ``explored_slot_target``): a self-normalised IPS estimate with a
  bootstrap interval, for the retrain's informational estimate on the explored slots.

Limits: labels exist only at the logged positions, so offline NDCG on logged slates favours the
model whose order is closest to the logging policy's. Position bias is the larger part of that
(a click at the top of the served order is partly the top's doing); with an examination curve
(a PAL-trained model's) ``decide`` weights each label by ``1 / examine(position)`` to remove it.
What remains (the logged slate is the served model's choice of items) keeps the gate
conservative towards the served model, which is what a deployer wants of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from models import offline_metrics as metrics

HEADS = ("click", "add_to_cart", "purchase")  # label / probability columns (models.deepfm.TASKS)
GRADES = (1.0, 2.0, 3.0)  # graded relevance of a click, a cart, a purchase
Array = npt.NDArray[np.float64]
MAX_IPS = 10.0  # cap on the 1/examine(position) weight of a label in the debiased NDCG


def ips_weight(examine: npt.ArrayLike) -> Array:
    """Each label's weight in the debiased NDCG: 1 / examine(position), capped at ``MAX_IPS``."""
    return np.minimum(1.0 / np.maximum(np.asarray(examine, dtype=np.float64), 1e-9), MAX_IPS)


@dataclasses.dataclass(frozen=True)
class PromotionPolicy:
    k: int = 10  # NDCG@k
    max_ece: float = 0.02  # every head of the new model must stay below
    min_gain: float = 0.0  # NDCG(new) must exceed NDCG(current) by more than this
    require_ci: bool = False  # also require the bootstrap interval of the gain to exclude 0
    # fewer slates with a positive than this: too little evidence to promote. On validation world
    # 0 a first model from 4.4k examples was promoted on 6 slates (gain +0.001, CI [-0.38, +0.41])
    # and took the model arm from 0.24 to 0.13-0.16 of the oracle for 4 sim hours (BENCHMARKS.md)
    min_requests: int = 30
    n_boot: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k <= 0 or not 0 < self.max_ece <= 1 or self.n_boot < 1 or self.min_requests < 0:
            raise ValueError(f"bad promotion policy {self}")


@dataclasses.dataclass
class Scored:
    """One model's scores on the slice."""

    value: npt.ArrayLike  # [n] what orders the served list (higher first)
    probs: npt.ArrayLike  # [n, 3] calibrated head probabilities (HEADS order; NaN = no such head)
    examine: npt.ArrayLike | None = None  # [n] examination multiplier of the shown position


def graded_relevance(labels: npt.ArrayLike) -> Array:
    """[n, 3] click / cart / purchase labels -> [n] relevance: the strongest action's grade."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1, len(GRADES))
    return np.max((y > 0) * np.asarray(GRADES), axis=1)


def _dcg(order_key: tuple[npt.NDArray[Any], ...], gain: Array, group: npt.NDArray[np.int64],
         n_groups: int, k: int) -> Array:
    """Per-group DCG@k of the rows ordered by ``np.lexsort(order_key)`` (last key = group)."""
    order = np.lexsort(order_key)
    g = group[order]
    starts = np.searchsorted(g, np.arange(n_groups))
    rank = np.arange(g.size) - starts[g]
    disc = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return np.bincount(g, weights=gain[order] * disc, minlength=n_groups).astype(np.float64)


def ndcg_per_request(score: npt.ArrayLike, relevance: npt.ArrayLike, request: npt.ArrayLike,
                     position: npt.ArrayLike, k: int, gain_weight: npt.ArrayLike | None = None
                     ) -> tuple[Array, npt.NDArray[np.int64]]:
    """(NDCG@k of each request with a positive, those requests' ids): each slate ordered by
    ``score`` descending, ties by the logged ``position``; each row's gain times
    ``gain_weight`` (default 1; ``1/examine(position)`` de-biases the labels)."""
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    rel = np.asarray(relevance, dtype=np.float64).reshape(-1)
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    ids, group = np.unique(np.asarray(request).reshape(-1), return_inverse=True)
    pos = np.asarray(position).reshape(-1)
    gain = np.exp2(rel) - 1.0
    if gain_weight is not None:
        gain = gain * np.asarray(gain_weight, dtype=np.float64).reshape(-1)
    dcg = _dcg((pos, -s, group), gain, group, ids.size, k)
    ideal = _dcg((-gain, group), gain, group, ids.size, k)
    has = ideal > 0
    return dcg[has] / ideal[has], ids[has]


def paired_ndcg(new_score: npt.ArrayLike, cur_score: npt.ArrayLike, labels: npt.ArrayLike,
                request: npt.ArrayLike, position: npt.ArrayLike, k: int, n_boot: int = 500,
                seed: int = 0, gain_weight: npt.ArrayLike | None = None) -> dict[str, Any]:
    """Mean NDCG@k of both orders over the requests with a positive, their difference and a
    paired bootstrap 95% interval of it (requests resampled with replacement)."""
    rel = graded_relevance(labels)
    a, _ = ndcg_per_request(new_score, rel, request, position, k, gain_weight)
    b, _ = ndcg_per_request(cur_score, rel, request, position, k, gain_weight)
    out: dict[str, Any] = {"requests_scored": int(a.size), "new": math.nan, "current": math.nan,
                           "gain": math.nan, "gain_ci95": [math.nan, math.nan]}
    if a.size == 0:
        return out
    d = a - b
    rng = np.random.default_rng(seed)
    boot = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(n_boot)])
    out.update(new=float(a.mean()), current=float(b.mean()), gain=float(d.mean()),
               gain_ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))])
    return out


def _shown(probs: npt.ArrayLike, examine: npt.ArrayLike | None, observable: npt.ArrayLike | None
           ) -> Array:
    """[n, 3] probabilities of the event as it can be observed on the slice."""
    p = np.array(probs, dtype=np.float64).reshape(-1, len(HEADS))
    if examine is not None:
        p *= np.asarray(examine, dtype=np.float64).reshape(-1, 1)
    if observable is not None:
        p[:, HEADS.index("purchase")] *= np.asarray(observable, dtype=np.float64).reshape(-1)
    return np.clip(p, 0.0, 1.0)


def head_ece(labels: npt.ArrayLike, probs: npt.ArrayLike, examine: npt.ArrayLike | None = None,
             observable: npt.ArrayLike | None = None) -> dict[str, float]:
    """ECE per head the model has (heads with NaN predictions are left out), on
    ``probs · examine`` (and the purchase head · ``observable``)."""
    y = (np.asarray(labels).reshape(-1, len(HEADS)) > 0).astype(np.float64)
    p = _shown(probs, examine, observable)
    return {h: metrics.ece(y[:, j], p[:, j]) for j, h in enumerate(HEADS)
            if y.shape[0] and not np.isnan(p[:, j]).any()}


def ece_noise_floor(probs: npt.ArrayLike, n_sim: int = 50, seed: int = 0) -> float:
    """Mean ECE of labels drawn from ``probs`` themselves (a perfectly calibrated model) on as
    many rows: the ECE that sampling noise alone produces on this slice."""
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if p.size == 0 or np.isnan(p).any():
        return math.nan
    rng = np.random.default_rng(seed)
    return float(np.mean([metrics.ece((rng.random(p.size) < p).astype(np.float64), p)
                          for _ in range(n_sim)]))


def head_auc(labels: npt.ArrayLike, probs: npt.ArrayLike) -> dict[str, float]:
    """AUC per head (NaN where the slice has one class only or the model lacks the head)."""
    y = (np.asarray(labels).reshape(-1, len(HEADS)) > 0).astype(np.float64)
    p = np.asarray(probs, dtype=np.float64).reshape(-1, len(HEADS))
    return {h: metrics.auc(y[:, j], p[:, j]) if 0 < y[:, j].sum() < y.shape[0]
            and not np.isnan(p[:, j]).any() else math.nan for j, h in enumerate(HEADS)}


def decide(policy: PromotionPolicy, labels: npt.ArrayLike, request: npt.ArrayLike,
           position: npt.ArrayLike, new: Scored, current: Scored,
           observable: npt.ArrayLike | None = None,
           rank_rows: npt.NDArray[np.bool_] | None = None) -> dict[str, Any]:
    """The gate on one slice: ``promote`` (bool), ``reason`` and every number it rests on.
    With an examination curve (either model's ``examine``, the new one's first), NDCG is
    position-debiased: each row's gain is weighted by ``1 / examine(position)`` (inverse
    propensity of being looked at, capped at ``MAX_IPS``), so a click low in the logged list
    counts for what it says about the item, not for where the served model put it.
    ``rank_rows`` (default all) restricts NDCG to those rows' slates, e.g. the slates the
    served model did not choose; calibration is checked on every row."""
    curve = new.examine if new.examine is not None else current.examine
    weight = None if curve is None else ips_weight(curve)
    sel = slice(None) if rank_rows is None else np.asarray(rank_rows, dtype=bool)

    def part(x: npt.ArrayLike | None) -> Any:
        return None if x is None else np.asarray(x)[sel]
    ndcg = paired_ndcg(part(new.value), part(current.value), part(labels), part(request),
                       part(position), policy.k, policy.n_boot, policy.seed, part(weight))
    sides: dict[str, dict[str, Any]] = {}
    for name, m in (("new", new), ("current", current)):
        eces = head_ece(labels, m.probs, m.examine, observable)
        shown = _shown(m.probs, m.examine, observable)
        auc = head_auc(labels, m.probs)
        known = [v for v in auc.values() if not math.isnan(v)]
        sides[name] = {
            "ndcg": ndcg[name], "ece": eces,
            "ece_noise": {h: ece_noise_floor(shown[:, HEADS.index(h)], seed=policy.seed) for h in eces},
            "auc": auc, "mean_auc": float(np.mean(known)) if known else math.nan,
            "position_debiased": m.examine is not None}
    failures = []
    k, gain, (lo, hi) = policy.k, ndcg["gain"], ndcg["gain_ci95"]
    if ndcg["requests_scored"] == 0:
        failures.append("no request in the slice has a click, cart or purchase: nothing to rank")
    elif ndcg["requests_scored"] < policy.min_requests:
        failures.append(f"only {ndcg['requests_scored']} slates with a click, cart or purchase to rank, "
                        f"< {policy.min_requests}: too little evidence (NDCG@{k} gain {gain:+.4f}, "
                        f"95% CI [{lo:+.4f}, {hi:+.4f}])")
    elif not gain > policy.min_gain:
        failures.append(f"NDCG@{k} {ndcg['new']:.4f} does not beat the served {ndcg['current']:.4f} "
                        f"by more than {policy.min_gain:g} (gain {gain:+.4f}, 95% CI [{lo:+.4f}, {hi:+.4f}])")
    elif policy.require_ci and not lo > 0:
        failures.append(f"NDCG@{k} gain {gain:+.4f} is not significant (95% CI [{lo:+.4f}, {hi:+.4f}])")
    new_ece, noise = sides["new"]["ece"], sides["new"]["ece_noise"]
    if not new_ece:
        failures.append("the new model has no head to check calibration on")
    bad = [h for h, v in new_ece.items() if not v < policy.max_ece]
    if bad:
        small = [h for h in bad if noise[h] >= policy.max_ece]
        failures.append(f"ECE at or above {policy.max_ece:g}: " + ", ".join(
            f"{h} {new_ece[h]:.4f} (sampling noise alone {noise[h]:.4f})" for h in bad) + (
                "" if not small else f"; the slice is too small to show ECE < {policy.max_ece:g} "
                f"even for a calibrated model ({', '.join(small)})"))
    promote = not failures
    if promote:
        reason = (f"NDCG@{k} {ndcg['new']:.4f} > served {ndcg['current']:.4f} (gain {gain:+.4f}, "
                  f"95% CI [{lo:+.4f}, {hi:+.4f}]) and ECE < {policy.max_ece:g} on every head ("
                  + ", ".join(f"{h} {v:.4f}" for h, v in new_ece.items()) + ")")
    else:
        reason = "; ".join(failures)
    return {"promote": promote, "reason": reason, "metric": f"ndcg@{k}",
            "ndcg_gain": gain, "ndcg_gain_ci95": [lo, hi], "requests_scored": ndcg["requests_scored"],
            "policy": dataclasses.asdict(policy), **sides}


# --- off-policy estimation ---------------------------------------------------------------------


def snips(reward: npt.ArrayLike, target: npt.ArrayLike, propensity: npt.ArrayLike,
          groups: npt.ArrayLike | None = None, n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """Self-normalised IPS: ``Σ w·r / Σ w`` with ``w = target / propensity`` (the target
    policy's probability of the logged action over the logging policy's). Rows without a
    logged propensity (<= 0) are left out. 95% interval by bootstrap over ``groups`` (whole
    requests; rows are independent without them). ``ess`` = (Σw)² / Σw²."""
    r = np.asarray(reward, dtype=np.float64).reshape(-1)
    pi = np.asarray(target, dtype=np.float64).reshape(-1)
    mu = np.asarray(propensity, dtype=np.float64).reshape(-1)
    g = np.arange(r.size) if groups is None else np.asarray(groups).reshape(-1)
    ok = mu > 0
    r, pi, mu, g = r[ok], pi[ok], mu[ok], g[ok]
    w = pi / mu
    out: dict[str, Any] = {"rows": int(r.size), "estimate": math.nan, "ci95": [math.nan, math.nan],
                           "ess": math.nan}
    if r.size == 0 or not w.sum() > 0:
        return out
    _, inv = np.unique(g, return_inverse=True)
    wr, ww = np.bincount(inv, weights=w * r), np.bincount(inv, weights=w)
    rng = np.random.default_rng(seed)
    picks = (rng.integers(0, wr.size, wr.size) for _ in range(n_boot))
    boot = np.array([wr[i].sum() / ww[i].sum() for i in picks if ww[i].sum() > 0])
    out.update(estimate=float((w * r).sum() / w.sum()), ess=float(w.sum() ** 2 / (w**2).sum()),
               ci95=[float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))])
    return out


def explored_slot_target(score: npt.ArrayLike, propensity: npt.ArrayLike, epsilon: float) -> Array:
    """Target probabilities on explored rows for "explore in proportion to the candidate's
    score": the logging policy (``online.rerank.explore``) shows a uniform draw from the
    exploration pool, propensity ``ε/|pool|``; the candidate policy draws an item with
    probability ``score / Σ_pool score``. ``|pool| = ε / propensity``; the pool's score sum,
    not logged, is ``|pool|`` times the mean score of the explored items (uniform draws from
    the pools). Capped at 1."""
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    mu = np.asarray(propensity, dtype=np.float64).reshape(-1)
    if s.size == 0 or not s.mean() > 0:
        return np.zeros(s.size)
    pool = epsilon / mu
    return np.minimum(1.0, s / (pool * s.mean()))


def json_safe(obj: Any) -> Any:
    """NaN / inf -> None, numpy scalars -> Python, recursively (strict JSON for the records)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
