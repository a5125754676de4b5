"""Vector helpers of the embeddings dataflow (no I/O): the cold-start blend of an item's prior
(category / brand centroids, else a hashed direction) with its learned item2vec vector (the item
tower's content encoding is ``models.two_tower.content_features``). The rule itself is described
in ``streams.embeddings``."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

Vec = npt.NDArray[np.float32]


# ----------------------------------------------------------------------------------------
# cold start


def unit(v: npt.ArrayLike) -> Vec | None:
    arr = np.asarray(v, dtype=np.float32)
    n = float(np.linalg.norm(arr))
    return None if not np.isfinite(n) or n < 1e-8 else np.asarray(arr / n, dtype=np.float32)


def blend_weight(n: int, min_interactions: int) -> float:
    """Weight of the learned vector after ``n`` interactions: linear ramp, 1 at the threshold."""
    return 1.0 if min_interactions <= 0 else min(1.0, max(0, n) / min_interactions)


def blend_rows(prior: Vec, learned: Vec, a: npt.ArrayLike) -> Vec:
    """Row-wise cold-start blend of unit vectors: ``normalise((1 - a)·prior + a·learned)``;
    a zero row of ``prior`` or ``learned`` means "absent" (the other one is used alone)."""
    w = np.clip(np.asarray(a, dtype=np.float32), 0.0, 1.0)
    has_p = np.abs(prior).sum(axis=1) > 0
    has_l = np.abs(learned).sum(axis=1) > 0
    w = np.where(has_l & ~has_p, 1.0, np.where(has_p & ~has_l, 0.0, w))[:, None]
    mixed = (1.0 - w) * prior + w * learned
    norms = np.linalg.norm(mixed, axis=1, keepdims=True)
    mixed = np.where(norms > 1e-6, mixed / np.maximum(norms, 1e-12), learned)  # antipodal: learned
    return np.asarray(mixed, dtype=np.float32)


def blend(prior: Vec | None, learned: Vec | None, n: int, min_interactions: int) -> Vec | None:
    """The cold-start vector of one item after ``n`` interactions (see module doc)."""
    p, q = (unit(x) if x is not None else None for x in (prior, learned))
    if p is None or q is None:
        return p if q is None else q
    return unit(blend_rows(p[None], q[None], [blend_weight(n, min_interactions)])[0])


def hashed_direction(key: str, dim: int) -> Vec:
    """A fixed pseudo-random unit vector per key (same key -> same direction)."""
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    v = unit(rng.standard_normal(dim))
    assert v is not None
    return v


def prior_vector(cat: Vec | None, brand: Vec | None) -> Vec | None:
    """Mean of the category and brand centroids (either may be missing)."""
    parts = [unit(x) for x in (cat, brand) if x is not None]
    kept = [p for p in parts if p is not None]
    return unit(np.mean(kept, axis=0)) if kept else None


def group_centroids(labels: Sequence[str], vecs: Vec, weights: npt.ArrayLike) -> dict[str, Vec]:
    """Weighted mean of unit vectors per label, normalised (empty labels skipped)."""
    w = np.asarray(weights, dtype=np.float32)
    keep = np.array([bool(lb) for lb in labels], dtype=bool)
    if vecs.shape[0] == 0 or not keep.any():
        return {}
    names, idx = np.unique(np.asarray(labels, dtype=object)[keep], return_inverse=True)
    order = np.argsort(idx, kind="stable")
    sorted_idx = idx[order]
    starts = np.flatnonzero(np.r_[True, sorted_idx[1:] != sorted_idx[:-1]])
    sums = np.add.reduceat((vecs[keep] * w[keep, None])[order], starts, axis=0)
    out = {str(names[sorted_idx[s]]): unit(sums[k]) for k, s in enumerate(starts)}
    return {lb: v for lb, v in out.items() if v is not None}
