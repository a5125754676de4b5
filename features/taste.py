"""Taste: how close an item's vector is to the vector of what the user touched lately.

The same item vectors retrieval searches (the scorer's item2vec replica) and the user's recent
items (``features.user_features``: the last ``recent_n`` distinct items, newest first, with the
session's last-N in front: they are fresher). The history vector is their recency-weighted
mean (weight ``decay ** rank``); the feature is the cosine of each candidate's vector with it.
Pure numpy; used by the scorer and by any offline builder that has the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
HISTORY_DECAY = 0.85  # weight of the r-th newest history item: decay ** r
HISTORY_MAX = 20
# the scorer's ANN source pools the session's last-viewed items' vectors with decay ** rank
# (a shorter memory than the taste feature's: the session, not the history)
ANN_POOL_DECAY = 0.7


def history_items(session_items: Sequence[str], recent: Sequence[str],
                  limit: int = HISTORY_MAX) -> list[str]:
    """The user's history, newest first, each item once: the session's items, then the
    longer-term recent list."""
    return list(dict.fromkeys([*session_items, *recent]))[:limit]


def history_vector(found: Sequence[int], vectors: npt.NDArray[np.floating],
                   decay: float = HISTORY_DECAY) -> npt.NDArray[np.float64] | None:
    """Recency-weighted mean of the history items that have vectors: ``found`` are their
    ranks in the history (0 = newest), ``vectors`` [m, dim] their vectors. None if none has
    one (or they cancel out)."""
    if not len(found):
        return None
    w = decay ** np.asarray(found, dtype=np.float64)  # [m]
    pooled = (w @ np.asarray(vectors, dtype=np.float64)) / w.sum()  # [dim]
    norm = float(np.linalg.norm(pooled))
    return pooled / norm if norm > 1e-9 else None


def similarities(n: int, found: Sequence[int], vectors: npt.NDArray[np.floating],
                 user_vector: npt.NDArray[np.float64] | None) -> F64:
    """Cosine of each of ``n`` candidates' vectors with the user's history vector; NaN where
    the candidate has no vector or the user no history vector. ``found`` are the positions
    (of the n) that have vectors, ``vectors`` [m, dim] theirs."""
    out = np.full(n, np.nan)
    if user_vector is None or not len(found):
        return out
    v = np.asarray(vectors)  # [m, dim] (float32 from the replica: the products stay float32)
    u = user_vector.astype(v.dtype, copy=False)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))  # [m]
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = (v @ u) / norms  # [m]
    out[np.asarray(found, dtype=np.int64)] = np.where(norms > 1e-9, cos, np.nan)
    return out


def taste_similarity(candidates: Sequence[str], history: Sequence[str],
                     lookup: object) -> F64:
    """``similarities`` of ``candidates`` to ``history`` with vectors from ``lookup`` (an object
    with ``get_vectors(ids) -> (found positions, vectors [m, dim])``, e.g. the ANN replica),
    in one lookup for both lists."""
    n = len(candidates)
    if lookup is None or not history or not n:
        return np.full(n, np.nan)
    found, vecs = lookup.get_vectors([*candidates, *history])  # type: ignore[attr-defined]
    f = np.asarray(found, dtype=np.int64)
    item_part, hist_part = f < n, f >= n
    user = history_vector((f[hist_part] - n).tolist(), vecs[hist_part])
    return similarities(n, f[item_part].tolist(), vecs[item_part], user)
