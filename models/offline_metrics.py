"""Offline evaluation metrics: numpy, plus scikit-learn for AUC (imported inside ``auc`` only,
since the scorer imports this module through ``models.calibration``).

Retrieval (one query = one ranked list):

* ``recall_at_k``   - share of the relevant items found in the top K, averaged over queries.
* ``hit_rate_at_k`` - share of queries with at least one relevant item in the top K
  (with one label per query this is SR-GNN's "P@20").
* ``mrr_at_k``      - mean reciprocal rank of the first relevant item, 0 outside the top K.
* ``ndcg_at_k``     - binary-relevance NDCG with the ``1/log2(rank+1)`` discount.

The ``*_from_ranks`` variants take the 1-based rank of the single label of each query (what a
model that scores all items produces cheaply: ``1 + #items scored above the label``).

Classification (binary labels, predicted probabilities): ``auc`` (``sklearn.metrics.roc_auc_score``:
Mann-Whitney, ties count half), ``log_loss`` (clipped), ``ece`` (expected calibration error,
equal-width bins).

Kept in numpy on purpose, against the scikit-learn equivalents:

* ``ndcg_at_k`` / ``ndcg_from_ranks``: ``sklearn.metrics.ndcg_score`` scores a dense
  [queries, items] matrix. These take ragged lists of item ids (relevant items missing from the
  list still count in the ideal DCG) or one 1-based rank per query; an adapter needs padding
  (2.4-2.8x slower on 10k lists of 100) or, for ranks, a matrix as wide as the largest rank (4.4 s
  against 0.01 ms for 2,000 queries over a 40k catalogue).
* ``log_loss``: ``sklearn.metrics.log_loss`` has no ``eps`` (it clips at the dtype's machine
  epsilon, ~2.2e-16, not 1e-15) and needs ``labels=[0, 1]`` for a one-class split; matching
  this one means clipping first, and it is ~6x slower (24-28 ms against 4-4.5 ms on 200k rows).
* ``ece``: no scikit-learn equivalent; ``sklearn.calibration.calibration_curve`` returns no bin
  counts and closes its bins on the right (``p = 0.1`` falls in the first of ten bins, here in
  the second).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike
Ranked = Sequence[Sequence[int]] | npt.NDArray[np.integer]


def _as_sets(relevant: Iterable[int | Iterable[int]]) -> list[set[int]]:
    out: list[set[int]] = []
    for r in relevant:
        if isinstance(r, Iterable) and not isinstance(r, str | bytes):
            out.append({int(x) for x in r})
        else:
            out.append({int(r)})  # type: ignore[arg-type]
    return out


def _check_k(k: int) -> None:
    if k <= 0:
        raise ValueError(f"k must be > 0, got {k}")


def _pairs(ranked: Ranked, relevant: Iterable[int | Iterable[int]]) -> list[tuple[list[int], set[int]]]:
    rel = _as_sets(relevant)
    lists = [[int(x) for x in row] for row in ranked]
    if len(lists) != len(rel):
        raise ValueError(f"{len(lists)} ranked lists but {len(rel)} relevance entries")
    if not lists:
        raise ValueError("no queries")
    return list(zip(lists, rel, strict=True))


def recall_at_k(ranked: Ranked, relevant: Iterable[int | Iterable[int]], k: int) -> float:
    """Mean over queries of ``|top_k & relevant| / |relevant|`` (queries with none relevant skipped)."""
    _check_k(k)
    vals = [len(set(r[:k]) & rel) / len(rel) for r, rel in _pairs(ranked, relevant) if rel]
    return float(np.mean(vals)) if vals else 0.0


def hit_rate_at_k(ranked: Ranked, relevant: Iterable[int | Iterable[int]], k: int) -> float:
    """Share of queries with a relevant item in the top K."""
    _check_k(k)
    return float(np.mean([bool(set(r[:k]) & rel) for r, rel in _pairs(ranked, relevant)]))


def mrr_at_k(ranked: Ranked, relevant: Iterable[int | Iterable[int]], k: int) -> float:
    """Mean reciprocal rank of the first relevant item within the top K (0 if none)."""
    _check_k(k)
    vals = []
    for r, rel in _pairs(ranked, relevant):
        rr = 0.0
        for i, item in enumerate(r[:k]):
            if item in rel:
                rr = 1.0 / (i + 1)
                break
        vals.append(rr)
    return float(np.mean(vals))


def ndcg_at_k(ranked: Ranked, relevant: Iterable[int | Iterable[int]], k: int) -> float:
    """Binary-relevance NDCG@K: DCG of the list over DCG of an ideal list of the same relevant set."""
    _check_k(k)
    vals = []
    for r, rel in _pairs(ranked, relevant):
        if not rel:
            continue
        dcg = sum(1.0 / np.log2(i + 2) for i, item in enumerate(r[:k]) if item in rel)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(len(rel), k)))
        vals.append(dcg / idcg)
    return float(np.mean(vals)) if vals else 0.0


# --- single-label variants on 1-based ranks ------------------------------------------------


def _ranks(ranks: ArrayLike) -> npt.NDArray[np.float64]:
    r = np.asarray(ranks, dtype=np.float64).reshape(-1)
    if r.size == 0:
        raise ValueError("no ranks")
    if np.any(r < 1):
        raise ValueError("ranks are 1-based and must be >= 1")
    return r


def hit_rate_from_ranks(ranks: ArrayLike, k: int) -> float:
    _check_k(k)
    return float(np.mean(_ranks(ranks) <= k))


def mrr_from_ranks(ranks: ArrayLike, k: int) -> float:
    _check_k(k)
    r = _ranks(ranks)
    return float(np.mean(np.where(r <= k, 1.0 / r, 0.0)))


def ndcg_from_ranks(ranks: ArrayLike, k: int) -> float:
    _check_k(k)
    r = _ranks(ranks)
    return float(np.mean(np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)))


# --- classification ------------------------------------------------------------------------


def _binary(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[npt.NDArray[np.float64], ...]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    p = np.asarray(y_prob, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"y_true has {y.size} values but y_prob has {p.size}")
    if y.size == 0:
        raise ValueError("empty input")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold only 0 and 1")
    return y, p


def auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2
    (``sklearn.metrics.roc_auc_score``). One class only raises ``ValueError``, as before
    (``roc_auc_score`` would warn and return NaN)."""
    y, s = _binary(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    from sklearn.metrics import roc_auc_score  # here, not at the top: the scorer imports this module

    return float(roc_auc_score(y, s))


def log_loss(y_true: ArrayLike, y_prob: ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]``."""
    y, p = _binary(y_true, y_prob)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def ece(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error: sum over equal-width bins of ``|B|/n * |mean(y) - mean(p)|``.

    Bins are ``[0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]`` (the last one closed).
    """
    if n_bins <= 0:
        raise ValueError(f"n_bins must be > 0, got {n_bins}")
    y, p = _binary(y_true, y_prob)
    if np.any((p < 0) | (p > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            total += m.sum() / y.size * abs(y[m].mean() - p[m].mean())
    return float(total)
