"""Offline evaluation metrics, pure numpy.

Retrieval (one query = one ranked list):

* ``recall_at_k``   - share of the relevant items found in the top K, averaged over queries.
* ``hit_rate_at_k`` - share of queries with at least one relevant item in the top K
  (with one label per query this is SR-GNN's "P@20").
* ``mrr_at_k``      - mean reciprocal rank of the first relevant item, 0 outside the top K.
* ``ndcg_at_k``     - binary-relevance NDCG with the ``1/log2(rank+1)`` discount.

The ``*_from_ranks`` variants take the 1-based rank of the single label of each query (what a
model that scores all items produces cheaply: ``1 + #items scored above the label``).

Classification (binary labels, predicted probabilities): ``auc`` (Mann-Whitney, ties count
half), ``log_loss`` (clipped), ``ece`` (expected calibration error, equal-width bins).
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
    """ROC AUC = P(score of a random positive > score of a random negative), ties count 1/2."""
    y, s = _binary(y_true, y_score)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    ranks = np.empty(y.size, dtype=np.float64)
    # average ranks (1-based) over ties
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


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
