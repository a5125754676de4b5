"""The scorer's pure math: merging retrieval results into tagged candidates, co-visitation
aggregation and session affinity. No I/O here (see ``online.retrieval`` for the sources,
``online.ranking`` for models, ``online.rerank`` for diversity and exploration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


class Candidate:
    """A retrieved item, tagged with every source that proposed it (priority order) and each
    source's normalised score. (A plain slotted class: hundreds are made per request.)"""

    __slots__ = ("item_id", "retrieval", "sources")

    def __init__(self, item_id: str, sources: list[str] | None = None,
                 retrieval: dict[str, float] | None = None) -> None:
        self.item_id = item_id
        self.sources: list[str] = sources if sources is not None else []
        self.retrieval: dict[str, float] = retrieval if retrieval is not None else {}

    def __repr__(self) -> str:
        return f"Candidate({self.item_id!r}, {self.sources!r}, {self.retrieval!r})"


@dataclass(slots=True)
class Ranked:
    """A scored candidate as served (not changed once made; ``dataclasses.replace`` copies)."""

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
    values = [s for _, s in scores]
    hi, lo = max(values), min(values)
    span = hi - lo
    if span <= 0:
        return [(i, 1.0) for i, _ in scores]
    scale = 0.95 / span
    return [(i, 0.05 + scale * (s - lo)) for i, s in scores]


def merge_candidates(
    sources: Iterable[tuple[str, Sequence[tuple[str, float]]]],
    limit: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[Candidate]:
    """Merge per-source results in source priority order, de-duplicated, capped at ``limit``."""
    merged: dict[str, Candidate] = {}
    for name, rows in sources:
        for item, score in normalise(rows):
            cand = merged.get(item)
            if cand is None:
                if len(merged) < limit and item not in exclude:
                    merged[item] = Candidate(item, [name], {name: score})
                continue
            retrieval = cand.retrieval
            prev = retrieval.get(name)
            if prev is None:
                cand.sources.append(name)
                retrieval[name] = score
            elif score > prev:
                retrieval[name] = score
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


def category_affinity(last_viewed: Sequence[str], category_of: Mapping[str, str]) -> dict[str, float]:
    """Share of the recently viewed items per category, recency-weighted (most recent first);
    ``category_of`` maps an item to its category (``online.features.ItemRow.category``)."""
    weights: dict[str, float] = {}
    for rank, item in enumerate(last_viewed):
        cat = category_of.get(item)
        if cat:
            weights[cat] = weights.get(cat, 0.0) + 0.8**rank
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()} if total else {}
