"""The scorer's pure math: merging retrieval results into tagged candidates, co-visitation
aggregation and session affinity. No I/O here (see ``online.retrieval`` for the sources,
``online.ranking`` for models, ``online.rerank`` for diversity and exploration).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, filterfalse, pairwise, repeat
from operator import itemgetter

import numpy as np
import numpy.typing as npt

from features.ranking_features import RetrievalColumns


@dataclass(frozen=True)
class Candidates:
    """Merged retrieval results, column by column: n item ids and, per source (columns in
    priority order), each item's normalised score, 0 where that source did not propose it."""

    item_ids: list[str]
    sources: tuple[str, ...]
    scores: npt.NDArray[np.float64]  # [n, len(sources)]

    def __len__(self) -> int:
        return len(self.item_ids)

    def sources_of(self, j: int) -> tuple[str, ...]:
        """The sources that proposed item j, in priority order."""
        return tuple(name for name, sc in zip(self.sources, self.scores[j].tolist(), strict=True) if sc > 0)

    def score(self, name: str) -> npt.NDArray[np.float64]:
        """One source's scores (zeros if that source had no results)."""
        return self.scores[:, self.sources.index(name)] if name in self.sources else np.zeros(len(self))

    def take(self, rows: Sequence[int] | npt.NDArray[np.int64]) -> Candidates:
        rows = np.asarray(rows, dtype=np.int64)
        return Candidates([self.item_ids[j] for j in rows.tolist()], self.sources, self.scores[rows])

    def retrieval(self) -> RetrievalColumns:
        """The retrieval features of ``features.ranking_features``."""
        return RetrievalColumns(self.score("covisit"),
                                np.maximum(self.score("popular"), self.score("top_sellers")),
                                (self.scores > 0).sum(axis=1).astype(np.float64))


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


def normalise(scores: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Map scores of one source to (0, 1] by rank-free min-max (log2 scores are comparable)."""
    if not len(scores):
        return scores
    lo = scores.min()
    span = scores.max() - lo
    if span <= 0:
        return np.ones_like(scores)
    return 0.05 + (0.95 / span) * (scores - lo)


def merge_candidates(
    sources: Iterable[tuple[str, Sequence[tuple[str, float]]]],
    limit: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> Candidates:
    """Merge per-source results (sources in priority order, rows best first), de-duplicated,
    into at most ``limit`` items; each item keeps every source's normalised score (the best
    if a source lists it twice), also of sources that came after it.

    An item belongs to the first source that offers it. When the sources bring more than
    ``limit`` items, each is first given a share of ``limit`` in proportion to the items it
    brings (its best first), so that a low-priority source (new items, top sellers) is not
    crowded out by the ones before it; the slots left by rounding go to the remaining items
    in priority order."""
    names: list[str] = []
    ids: list[str] = []
    cols: list[int] = []
    norms = []
    first: dict[str, None] = {}  # first appearance order = priority order
    bounds = [0]  # first[bounds[s]:bounds[s + 1]]: the items source s brings
    for name, rows in sources:
        if not rows:
            continue
        if name not in names:
            names.append(name)
        got, scores = zip(*rows, strict=True)
        ids += got
        cols += [names.index(name)] * len(got)
        norms.append(normalise(np.asarray(scores, dtype=np.float64)))
        first.update(zip(got, repeat(None)))
        bounds.append(len(first))
    keys = list(first)
    brought = [keys[a:b] for a, b in pairwise(bounds)]
    if exclude and not exclude.isdisjoint(keys):
        brought = [list(filterfalse(exclude.__contains__, part)) for part in brought]
    kept = _shares(brought, limit)
    pos = dict(zip(kept, range(len(kept)), strict=True))
    at = np.fromiter(map(pos.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
    ok = at >= 0
    matrix = np.zeros((len(kept), len(names)))
    if len(ids):
        np.maximum.at(matrix, (at[ok], np.asarray(cols, dtype=np.int64)[ok]), np.concatenate(norms)[ok])
    return Candidates(kept, tuple(names), matrix)


def _shares(brought: list[list[str]], limit: int) -> list[str]:
    """``limit`` of the items the sources bring (disjoint lists, priority order): each
    source's proportional share first, then what rounding left, in priority order."""
    total = sum(map(len, brought))
    if total <= limit:
        return list(chain.from_iterable(brought))
    shares = [limit * len(part) // total for part in brought]
    kept = list(chain.from_iterable(part[:n] for part, n in zip(brought, shares, strict=True)))
    for part, n in zip(brought, shares, strict=True):
        kept += part[n: n + limit - len(kept)]
    return kept


def combine_related(lists: Sequence[Sequence[tuple[str, float]]], recency_decay: float = 0.7
                    ) -> list[tuple[str, float]]:
    """Co-visitation from several seed items (most recent first): weight by seed recency.

    Scores are log2 forward-decayed weights, so ``2**s`` is proportional to the weight."""
    agg: dict[str, float] = {}
    for rank, rows in enumerate(lists):
        if not rows:
            continue
        items, scores = zip(*rows, strict=True)
        s = np.asarray(scores, dtype=np.float64)
        weights = (recency_decay**rank) * np.exp2(s - s.max())
        for item, w in zip(items, weights.tolist(), strict=True):
            agg[item] = agg.get(item, 0.0) + w
    by_id = sorted(agg.items())  # then a stable sort: best first, ties by id
    return sorted(by_id, key=itemgetter(1), reverse=True)


def category_affinity(last_viewed: Sequence[str], category_of: Mapping[str, str]) -> dict[str, float]:
    """Share of the recently viewed items per category, recency-weighted (most recent first);
    ``category_of`` maps an item to its category (``features.ranking_features.ItemRow.category``)."""
    weights: dict[str, float] = {}
    for rank, item in enumerate(last_viewed):
        cat = category_of.get(item)
        if cat:
            weights[cat] = weights.get(cat, 0.0) + 0.8**rank
    total = sum(weights.values())
    return {c: w / total for c, w in weights.items()} if total else {}
