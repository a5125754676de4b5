"""Re-ranking: business filters, diversity caps, and exploration with logged propensities.

Exploration (epsilon-greedy on reserved slots): each of ``slots`` reserved positions is, with
probability epsilon, given to an item drawn uniformly from the exploration pool (new and
niche items that ranked below the list). The propensity logged for an item is the probability
the policy showed it there: 1 for ordinary positions, 1 - epsilon for the exploit item of a
reserved slot, epsilon / |pool| for an explored item, so training can correct (IPS) for it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from online.scorer import Ranked


@dataclass(frozen=True)
class Exploration:
    epsilon: float = 0.1
    slots: tuple[int, ...] = (4, 9)  # 0-based positions that may explore
    pool_sources: tuple[str, ...] = ("new_items", "trending")
    niche_log_views: float = 1.0  # or items with fewer (decayed) views than e^x - 1


def diversify(ranked: Sequence[Ranked], k: int, catalog: dict[str, dict[str, Any]],
              max_per_category: int, max_per_brand: int) -> list[Ranked]:
    """Drop inactive items; greedily cap items per category and brand; backfill if short."""
    picked: list[Ranked] = []
    skipped: list[Ranked] = []
    per_cat: dict[str, int] = {}
    per_brand: dict[str, int] = {}
    for r in ranked:
        row = catalog.get(r.item_id) or {}
        if row and not row.get("active", True):
            continue
        cat, brand = str(row.get("category", "")), str(row.get("brand", ""))
        if (cat and per_cat.get(cat, 0) >= max_per_category) or (
                brand and per_brand.get(brand, 0) >= max_per_brand):
            skipped.append(r)
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
        per_brand[brand] = per_brand.get(brand, 0) + 1
        picked.append(r)
        if len(picked) == k:
            return picked
    return (picked + skipped)[:k]


def explore(items: list[Ranked], rest: Sequence[Ranked], policy: Exploration,
            rng: random.Random) -> list[Ranked]:
    """Apply epsilon-greedy exploration on the reserved slots of ``items`` (the exploit list);
    ``rest`` are the ranked candidates not in it (the pool is drawn from those)."""
    if policy.epsilon <= 0 or not policy.slots:
        return items
    shown = {r.item_id for r in items}
    pool = [r for r in rest if r.item_id not in shown and (
        set(r.sources) & set(policy.pool_sources)
        or r.features.get("log_views", 0.0) < policy.niche_log_views)]
    out = list(items)
    for pos in policy.slots:
        if pos >= len(out):
            continue
        if pool and rng.random() < policy.epsilon:
            pick = pool.pop(rng.randrange(len(pool)))
            out[pos] = replace(pick, propensity=policy.epsilon / (len(pool) + 1),
                               sources=(*pick.sources, "explore"))
        else:
            out[pos] = replace(out[pos], propensity=1.0 - policy.epsilon)
    return out
