"""Re-ranking: business filters, diversity caps, and exploration with logged propensities.

Exploration (epsilon-greedy on reserved slots): each of ``slots`` reserved positions is, with
probability epsilon, given to an item drawn uniformly from the exploration pool (new and
niche items that ranked below the list). The propensity logged for an item is the probability
the policy showed it there: 1 for ordinary positions, 1 - epsilon for the exploit item of a
reserved slot, epsilon / |pool| for an explored item, so training can correct (IPS) for it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from features.ranking_features import ItemColumns
from online.candidates import Candidates, Ranked


@dataclass(frozen=True)
class Exploration:
    epsilon: float = 0.1
    slots: tuple[int, ...] = (4, 9)  # 0-based positions that may explore
    pool_sources: tuple[str, ...] = ("new_items", "trending")
    niche_log_views: float = 1.0  # or items with fewer (decayed) views than e^x - 1

    def in_pool(self, sources: Sequence[str], log_views: float) -> bool:
        """New or niche: proposed by a pool source, or barely viewed."""
        return log_views < self.niche_log_views or any(s in self.pool_sources for s in sources)

    def pool_mask(self, cands: Candidates, log_views: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """``in_pool`` of every candidate at once."""
        mask = log_views < self.niche_log_views
        for name in self.pool_sources:
            mask |= cands.score(name) > 0
        return mask


def diversify(order: Sequence[int], k: int, items: ItemColumns, max_per_category: int,
              max_per_brand: int) -> list[int]:
    """Positions (into ``items``) of the first ``k`` of ``order`` after dropping inactive items
    and greedily capping items per category and brand; backfilled from the capped ones if short."""
    picked: list[int] = []
    skipped: list[int] = []
    per_cat: dict[str, int] = {}
    per_brand: dict[str, int] = {}
    categories, brands, active = items.category, items.brand, items.active
    for j in order:
        if not active[j]:
            continue
        cat, brand = categories[j], brands[j]
        if (cat and per_cat.get(cat, 0) >= max_per_category) or (
                brand and per_brand.get(brand, 0) >= max_per_brand):
            skipped.append(j)
            continue
        per_cat[cat] = per_cat.get(cat, 0) + 1
        per_brand[brand] = per_brand.get(brand, 0) + 1
        picked.append(j)
        if len(picked) == k:
            return picked
    return (picked + skipped)[:k]


def explore(items: list[Ranked], rest: Sequence[Any] | Callable[[], Sequence[Any]],
            policy: Exploration, rng: random.Random,
            make: Callable[[Any], Ranked] | None = None) -> list[Ranked]:
    """Apply epsilon-greedy exploration on the reserved slots of ``items`` (the exploit list).

    ``rest`` are the ranked candidates not in it (filtered here with ``policy.in_pool``), or
    a function returning them, called only when a slot does explore (most requests do not).
    With ``make``, ``rest`` holds cheap handles of pool members, already filtered, and
    ``make(handle)`` builds the ``Ranked`` of the one that is picked."""
    if policy.epsilon <= 0 or not policy.slots:
        return items
    out = list(items)
    pool: list[Any] | None = None
    for pos in policy.slots:
        if pos >= len(out):
            continue
        if rng.random() < policy.epsilon:
            if pool is None:
                cands = rest() if callable(rest) else rest
                shown = {r.item_id for r in items}
                pool = list(cands) if make is not None else [
                    r for r in cands if r.item_id not in shown
                    and policy.in_pool(r.sources, r.features.get("log_views", 0.0))]
            if pool:
                pick = pool.pop(rng.randrange(len(pool)))
                picked = make(pick) if make is not None else pick
                out[pos] = replace(picked, propensity=policy.epsilon / (len(pool) + 1),
                                   sources=(*picked.sources, "explore"))
                continue
        out[pos] = replace(out[pos], propensity=1.0 - policy.epsilon)
    return out
