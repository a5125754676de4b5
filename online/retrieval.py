"""Candidate retrieval: small pluggable sources, each with its own quota, latency and failure.

A source that fails or has nothing is skipped (counted per source); only losing the user state
itself sends a request to the fallback list. Each source returns ``[(item_id, score)]`` best
first; ``online.candidates.merge_candidates`` merges them in priority order, de-duplicated and
tagged with every source that proposed each item, giving each source a share of the
candidates in proportion to the items it brings (the quotas below offer 670 rows for 500
candidates). A source that reads shared lists from the store names them (``lists``) so that
``retrieve`` can have the store read every list the request misses in one round trip before
the sources run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from features.taste import ANN_POOL_DECAY, HISTORY_DECAY, history_vector
from online import scorer_metrics as metrics
from online.candidates import combine_related
from online.store import ListRef, UserState

log = logging.getLogger(__name__)
Rows = list[tuple[str, float]]


@dataclass
class Query:
    """What the sources know about the request."""

    user_id: str
    state: UserState
    top_categories: list[str] = field(default_factory=list)  # user's preferred, best first
    exclude: frozenset[str] = frozenset()


class Source(Protocol):
    name: str
    quota: int

    def fetch(self, q: Query) -> Rows: ...

    def lists(self, q: Query) -> list[ListRef]:
        """The shared lists ``fetch`` will read from the store (none: [])."""
        ...


@dataclass
class CovisitSource:
    """Items co-viewed with the session's last-N viewed items (recency-weighted)."""

    store: Any
    quota: int = 150
    per_item: int = 50
    name: str = "covisit"

    def fetch(self, q: Query) -> Rows:
        if not q.state.last_viewed:
            return []
        related = self.store.related(q.state.last_viewed, per_item=self.per_item)
        return combine_related(related)[: self.quota]

    def lists(self, q: Query) -> list[ListRef]:
        return [("covisit", i, self.per_item) for i in q.state.last_viewed]


@dataclass
class SessionAnnSource:
    """Nearest neighbours of the session: the promoted two-tower's session-tower vector of the
    recently viewed items, searched among that model's item vectors (``online.tower``), or,
    until such a model is loaded or when it knows none of the items, the recency-weighted mean
    of their item2vec vectors searched in the item2vec replica."""

    index: Callable[[], Any]  # -> AnnIndex | None (the item2vec follower's current index)
    quota: int = 150
    name: str = "ann"
    tower: Callable[[], Any] = lambda: None  # -> online.tower.Tower | None

    def fetch(self, q: Query) -> Rows:
        recent = q.state.last_viewed
        if not recent:
            return []
        tower = self.tower()
        if tower is not None:
            idx = tower.index()
            if idx is not None and len(idx):
                vec = tower.user_vector(recent)
                if vec is not None:
                    metrics.child(metrics.ANN_QUERIES, "tower").inc()
                    return list(idx.query(vec, self.quota, exclude=set(recent)))
        idx = self.index()
        if idx is None or not len(idx):
            return []
        found, vecs = idx.get_vectors(recent)
        if not found:
            return []
        pooled = history_vector(found, vecs, ANN_POOL_DECAY)  # [dim] recency-weighted mean
        if pooled is None:
            return []
        metrics.child(metrics.ANN_QUERIES, "item2vec").inc()
        return list(idx.query(pooled, self.quota, exclude=set(recent)))

    def lists(self, q: Query) -> list[ListRef]:
        return []


def history_rows(recent: Sequence[str], quota: int) -> Rows:
    """The user's recent items (newest first) as retrieval rows, scored ``HISTORY_DECAY ** rank``
    (the ``in_history`` feature's weights); the offline training set uses it too."""
    return [(str(i), HISTORY_DECAY ** r) for r, i in enumerate(recent[:quota])]


@dataclass
class HistorySource:
    """The items the user touched lately (``features.user_features`` recent list, newest first;
    the current session's are excluded by the merge): "continue shopping". No I/O: the list
    comes with the user's features."""

    quota: int = 20
    name: str = "history"

    def fetch(self, q: Query) -> Rows:
        return history_rows((q.state.features or {}).get("recent") or [], self.quota)

    def lists(self, q: Query) -> list[ListRef]:
        return []


@dataclass
class TrendingSource:
    """Trending items (short-horizon decayed views) in the user's preferred categories."""

    store: Any
    quota: int = 100
    categories: int = 3
    name: str = "trending"

    def _per(self, cats: list[str]) -> int:
        return max(1, self.quota // len(cats))

    def lists(self, q: Query) -> list[ListRef]:
        cats = q.top_categories[: self.categories]
        return [("trending", c, self._per(cats)) for c in cats]

    def fetch(self, q: Query) -> Rows:
        cats = q.top_categories[: self.categories]
        if not cats:
            return []
        per = self._per(cats)
        lists = self.store.trending(cats, per)
        # interleave categories, best first, so each preferred category gets a share
        out: Rows = []
        for i in range(per):
            out.extend(rows[i] for rows in lists if i < len(rows))
        return out[: self.quota]


@dataclass
class NewItemsSource:
    """The newest catalog items: the exploration pool for cold-start items."""

    store: Any
    quota: int = 50
    name: str = "new_items"

    def fetch(self, q: Query) -> Rows:
        return self.store.new_items(self.quota)

    def lists(self, q: Query) -> list[ListRef]:
        return [("new_items", "", self.quota)]


@dataclass
class PopularSource:
    store: Any
    quota: int = 150
    name: str = "popular"

    def fetch(self, q: Query) -> Rows:
        return self.store.popular(self.quota)

    def lists(self, q: Query) -> list[ListRef]:
        return [("popular", "", self.quota)]


@dataclass
class TopSellersSource:
    """Global top sellers, from the in-memory fallback list (no I/O)."""

    items: Callable[[], list[str]]
    quota: int = 50
    name: str = "top_sellers"

    def fetch(self, q: Query) -> Rows:
        return [(i, 1.0) for i in self.items()[: self.quota]]

    def lists(self, q: Query) -> list[ListRef]:
        return []


def retrieve(sources: Sequence[Source], q: Query,
             prefetch: Callable[[list[ListRef]], None] | None = None) -> list[tuple[str, Rows]]:
    """Run every source; a failing source is skipped and counted, never fatal. With
    ``prefetch`` (``StateStore.prefetch``), the shared lists of all sources are read first in
    one go; should that fail, each source reads (or fails) on its own."""
    if prefetch is not None:
        t0 = time.perf_counter()
        try:
            prefetch([ref for src in sources for ref in src.lists(q)])
        except Exception as exc:  # noqa: BLE001 - an optimisation: the sources read for themselves
            metrics.child(metrics.SOURCE_ERRORS, "prefetch").inc()
            log.debug("shared-list prefetch failed: %s", exc)
        metrics.child(metrics.STAGE_LATENCY, "source_prefetch").observe(time.perf_counter() - t0)
    out = []
    for src in sources:
        t0 = time.perf_counter()
        try:
            rows = src.fetch(q)
        except Exception as exc:  # noqa: BLE001 - one source failing must not fail the request
            metrics.child(metrics.SOURCE_ERRORS, src.name).inc()
            log.debug("retrieval source %s failed: %s", src.name, exc)
            rows = []
        metrics.child(metrics.STAGE_LATENCY, f"source_{src.name}").observe(time.perf_counter() - t0)
        metrics.child(metrics.CANDIDATES, src.name).observe(len(rows))
        if rows:
            out.append((src.name, rows))
    return out
