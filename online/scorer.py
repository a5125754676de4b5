"""The scorer's pure math: merging retrieval results into tagged candidates, co-visitation
aggregation and session affinity. No I/O here (see ``online.retrieval`` for the sources,
``online.ranking`` for models, ``online.rerank`` for diversity and exploration).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    item_id: str
    sources: list[str] = field(default_factory=list)
    retrieval: dict[str, float] = field(default_factory=dict)  # source -> normalised score


@dataclass(frozen=True)
class Ranked:
    item_id: str
    score: float
    p_click: float
    p_cart: float
    p_purchase: float
    sources: tuple[str, ...]
    features: dict[str, float]
    propensity: float = 1.0


def normalise(scores: Sequence[tuple[str, float]]) -> list[tuple[str, float]]:
    """Map scores of one source to (0, 1] by rank-free min-max (log2 scores are comparable)."""
    if not scores:
        return []
    hi = max(s for _, s in scores)
    lo = min(s for _, s in scores)
    span = hi - lo
    return [(i, 1.0 if span <= 0 else 0.05 + 0.95 * (s - lo) / span) for i, s in scores]


def merge_candidates(
    sources: Iterable[tuple[str, Sequence[tuple[str, float]]]],
    limit: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[Candidate]:
    """Merge per-source results in source priority order, de-duplicated, capped at ``limit``."""
    merged: dict[str, Candidate] = {}
    for name, rows in sources:
        for item, score in normalise(rows):
            if item in exclude:
                continue
            cand = merged.get(item)
            if cand is None:
                if len(merged) >= limit:
                    continue
                cand = merged[item] = Candidate(item)
            if name not in cand.sources:
                cand.sources.append(name)
            cand.retrieval[name] = max(cand.retrieval.get(name, 0.0), score)
    return list(merged.values())


def combine_related(lists: Sequence[Sequence[tuple[str, float]]], recency_decay: float = 0.7
                    ) -> list[tuple[str, float]]:
    """Co-visitation from several seed items (most recent first): weight by seed recency.

    Scores are log2 forward-decayed weights, so ``2**s`` is proportional to the weight."""
    agg: dict[str, float] = {}
    for rank, rows in enumerate(lists):
        if not rows:
            continue
        top = max(s for _, s in rows)
        for item, s in rows:
            agg[item] = agg.get(item, 0.0) + (recency_decay**rank) * 2.0 ** (s - top)
    return sorted(agg.items(), key=lambda kv: (-kv[1], kv[0]))


def category_affinity(last_viewed: Sequence[str], catalog: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Share of the recently viewed items per category, recency-weighted (most recent first)."""
    weights: dict[str, float] = {}
    for rank, item in enumerate(last_viewed):
        cat = (catalog.get(item) or {}).get("category")
        if cat:
            weights[str(cat)] = weights.get(str(cat), 0.0) + 0.8**rank
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()} if total else {}
