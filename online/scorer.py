"""The scorer's math, pure: candidates in, ranked list out. No I/O here.

retrieval results (per source) ─► merge (dedupe, tag sources, cap) ─► features
    ─► rank (heuristic until a trained model is promoted) ─► re-rank (filters, diversity)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

HEURISTIC_VERSION = "heuristic-v1"


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


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def heuristic_rank(cands: Sequence[Candidate], category_affinity: dict[str, float],
                   catalog: dict[str, dict[str, Any]]) -> list[Ranked]:
    """A transparent stand-in ranker: co-visitation, popularity and session-category affinity.

    p_click = sigmoid(-3.5 + 2.5·covisit + 1.0·popularity + 1.5·affinity); cart and purchase
    heads are fixed fractions of it. Not calibrated: responses say so via the model version."""
    out = []
    for c in cands:
        row = catalog.get(c.item_id) or {}
        feats = {
            "covisit": c.retrieval.get("covisit", 0.0),
            "popular": max(c.retrieval.get("popular", 0.0), c.retrieval.get("top_sellers", 0.0)),
            "affinity": category_affinity.get(str(row.get("category", "")), 0.0),
            "price": float(row.get("price", 0.0) or 0.0),
            "n_sources": float(len(c.sources)),
        }
        logit = -3.5 + 2.5 * feats["covisit"] + 1.0 * feats["popular"] + 1.5 * feats["affinity"]
        p_click = sigmoid(logit)
        out.append(Ranked(c.item_id, p_click, p_click, 0.3 * p_click, 0.1 * p_click,
                          tuple(c.sources), feats))
    out.sort(key=lambda r: (-r.score, r.item_id))
    return out


def category_affinity(last_viewed: Sequence[str], catalog: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Share of the recently viewed items per category, recency-weighted (most recent first)."""
    weights: dict[str, float] = {}
    for rank, item in enumerate(last_viewed):
        cat = (catalog.get(item) or {}).get("category")
        if cat:
            weights[str(cat)] = weights.get(str(cat), 0.0) + 0.8**rank
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()} if total else {}


def rerank(ranked: Sequence[Ranked], k: int, catalog: dict[str, dict[str, Any]],
           max_per_category: int) -> list[Ranked]:
    """Drop inactive items, cap items per category for diversity; backfill if short."""
    picked: list[Ranked] = []
    skipped: list[Ranked] = []
    per_cat: dict[str, int] = {}
    for r in ranked:
        row = catalog.get(r.item_id) or {}
        if row and not row.get("active", True):
            continue
        cat = str(row.get("category", ""))
        if cat and per_cat.get(cat, 0) >= max_per_category:
            skipped.append(r)
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
        picked.append(r)
        if len(picked) == k:
            return picked
    return (picked + skipped)[:k]
