"""Ranking features, assembled by ONE pure function used everywhere.

``assemble_columns`` computes the features of one user and context with many items at once,
column by column (numpy), from compact per-item rows (``ItemRow``, built by ``item_row`` from
the item's catalog row and live stats). The scorer calls it for every request and logs each
served item's ``FeatureBatch.row(i)`` with the impression; the label join copies that into each
training example; the offline training-set builder calls ``assemble_batch`` (the same function,
dict rows out) on state built by the same step functions. So a model is trained on exactly the
features it is served with.

``SPARSE`` features are strings (hashed into embedding tables by the models), ``DENSE`` are
floats (already scaled to roughly unit range). ``FEATURE_VERSION`` goes into model configs:
a model refuses features of another version.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from features.decay import decay_exponent  # pure; shared with the dataflow
from features.taste import HISTORY_DECAY

FEATURE_VERSION = 3  # 2: taste, brand affinity, rating, item age, time, recency, depth; 3: user_id

# user_id: the shopper's id, hashed into the ranker's embedding table like every sparse field
# (a per-user vector the ranker learns from that shopper's own clicks: +0.022 NDCG@10 of the
# shown slates by the true relevance on a validation world of live density, BENCHMARKS.md)
SPARSE = ("item_id", "category", "brand", "surface", "device", "country", "user_id")
PER_ITEM_SPARSE = ("item_id", "category", "brand")  # the others are one value per request
DENSE = (
    "u_cat_pref",  # user's decayed preference share for the item's category
    "s_cat_aff",  # session (last-N viewed) affinity for the item's category
    "covisit",  # co-visitation retrieval score (0..1)
    "popular",  # popularity retrieval score (0..1)
    "log_views",  # log1p decayed views of the item
    "item_ctr",  # smoothed CTR
    "item_cvr",  # smoothed CVR
    "log_price",
    "price_vs_user",  # log(price / user's mean purchase price), 0 when unknown
    "log_user_events",  # log1p of the user's lifetime events
    "in_session",  # 1 if the item is among the last-N viewed
    "n_sources",  # how many retrieval sources proposed it
    "u_brand_pref",  # user's decayed preference share for the item's brand
    "taste_sim",  # cosine(item vector, user's recent-history vector) (features.taste); 0 unknown
    "taste_known",  # 1 if both vectors exist
    "rating",  # (catalog rating - 3) / 2, 0 when unknown
    "log_age_h",  # log1p(hours since the item's first catalog row), 0 when unknown
    "hour_sin",  # time of day (UTC), cyclical
    "hour_cos",
    "dow_sin",  # day of week (UTC), cyclical
    "dow_cos",
    "log_idle_h",  # log1p(hours since the user's last event), 0 when unknown
    "session_depth",  # log1p(events in the user's current session)
    "in_history",  # 0.85 ** rank if among the user's recent items (newest = rank 0), else 0
)
COL = {name: j for j, name in enumerate(DENSE)}
HOUR_MS = 3_600_000.0
DEFAULT_CTR, DEFAULT_CVR = 0.02, 0.05


class CatalogPart(NamedTuple):
    """What ranking needs of an item's catalog row."""

    category: str
    brand: str
    price: float
    active: bool
    rating: float = 0.0  # 0 = unknown
    first_ms: int = 0  # first catalog row's time; 0 = unknown


class StatsPart(NamedTuple):
    """What ranking needs of an item's live stats (the dataflow's item features)."""

    category: str
    brand: str
    price: float
    views: float  # log2 forward-decayed views; NaN when unknown
    ctr: float
    cvr: float


class ItemRow(NamedTuple):
    """One item as the ranker sees it: catalog fields first, stats as the fallback."""

    category: str
    brand: str
    price: float
    views: float
    ctr: float
    cvr: float
    active: bool
    rating: float = 0.0
    first_ms: int = 0


def catalog_part(row: Mapping[str, Any] | None) -> CatalogPart | None:
    if not row:
        return None
    return CatalogPart(str(row.get("category") or ""), str(row.get("brand") or ""),
                       float(row.get("price") or 0.0), bool(row.get("active", True)),
                       float(row.get("rating") or 0.0), int(row.get("first") or 0))


def stats_part(stats: Mapping[str, Any] | None) -> StatsPart | None:
    if not stats:
        return None
    views = stats.get("views")
    return StatsPart(str(stats.get("cat") or ""), str(stats.get("brand") or ""),
                     float(stats.get("price") or 0.0), math.nan if views is None else float(views),
                     float(stats.get("ctr", DEFAULT_CTR)), float(stats.get("cvr", DEFAULT_CVR)))


NO_STATS = StatsPart("", "", 0.0, math.nan, DEFAULT_CTR, DEFAULT_CVR)


def combine(cat: CatalogPart | None, st: StatsPart | None) -> ItemRow:
    st = st or NO_STATS
    if cat is None:
        return ItemRow(st.category, st.brand, st.price, st.views, st.ctr, st.cvr, True)
    return ItemRow(cat.category or st.category, cat.brand or st.brand, cat.price or st.price,
                   st.views, st.ctr, st.cvr, cat.active, cat.rating, cat.first_ms)


def item_row(catalog: Mapping[str, Any] | None, stats: Mapping[str, Any] | None) -> ItemRow:
    """An item's catalog row and live stats (as stored in Redis) -> ``ItemRow``."""
    return combine(catalog_part(catalog), stats_part(stats))


def hash_token(field: str, value: str) -> int:
    """Stable (process-independent) 32-bit hash of one sparse value; "" (missing) is 0. Each
    model maps it into its own per-field bucket range (``hash % buckets[field]``)."""
    return 0 if value == "" else zlib.crc32(f"{field}={value}".encode())


@dataclass(frozen=True)
class ItemColumns:
    """n items' ``ItemRow`` fields as columns, optionally with the hashes of their per-item
    sparse values (``PER_ITEM_SPARSE`` -> int64 [n]; the scorer's item table keeps them)."""

    category: Sequence[str]
    brand: Sequence[str]
    price: npt.NDArray[np.float64]
    views: npt.NDArray[np.float64]  # NaN = unknown
    ctr: npt.NDArray[np.float64]
    cvr: npt.NDArray[np.float64]
    active: npt.NDArray[np.bool_]
    hashes: Mapping[str, npt.NDArray[np.int64]] | None = None
    rating: npt.NDArray[np.float64] | None = None  # 0 = unknown; None: all unknown
    first_ms: npt.NDArray[np.float64] | None = None  # 0 = unknown; None: all unknown

    def __len__(self) -> int:
        return len(self.category)

    def head(self, n: int) -> ItemColumns:
        """The first n items."""
        return ItemColumns(self.category[:n], self.brand[:n], self.price[:n], self.views[:n],
                           self.ctr[:n], self.cvr[:n], self.active[:n],
                           None if self.hashes is None else {k: v[:n] for k, v in self.hashes.items()},
                           None if self.rating is None else self.rating[:n],
                           None if self.first_ms is None else self.first_ms[:n])

    @classmethod
    def from_rows(cls, rows: Sequence[ItemRow]) -> ItemColumns:
        if not rows:
            z = np.zeros(0)
            return cls([], [], z, z, z, z, np.zeros(0, dtype=bool), None, z, z)
        cat, brand, price, views, ctr, cvr, active, rating, first = zip(*rows, strict=True)
        f = np.float64
        return cls(list(cat), list(brand), np.asarray(price, f), np.asarray(views, f),
                   np.asarray(ctr, f), np.asarray(cvr, f), np.asarray(active, dtype=bool), None,
                   np.asarray(rating, f), np.asarray(first, f))


class RetrievalColumns(NamedTuple):
    """What ranking uses of retrieval, per candidate: the co-visitation score, the popularity
    score (popular or top sellers, the larger) and how many sources proposed it."""

    covisit: npt.NDArray[np.float64]
    popular: npt.NDArray[np.float64]
    n_sources: npt.NDArray[np.float64]

    @classmethod
    def from_mappings(cls, retrievals: Sequence[Mapping[str, float]]) -> RetrievalColumns:
        """From one {source: normalised score} map per candidate."""
        f = np.float64
        return cls(np.fromiter((r.get("covisit", 0.0) for r in retrievals), f, len(retrievals)),
                   np.fromiter((max(r.get("popular", 0.0), r.get("top_sellers", 0.0))
                                for r in retrievals), f, len(retrievals)),
                   np.fromiter((len(r) for r in retrievals), f, len(retrievals)))


@dataclass(frozen=True)
class FeatureBatch:
    """Features of n items for one request: per-item sparse columns, the request's constant
    sparse values, and a dense matrix [n, len(DENSE)] (float64, ``DENSE`` order)."""

    item_ids: Sequence[str]
    categories: Sequence[str]
    brands: Sequence[str]
    constants: Mapping[str, str]  # surface, device, country, user_id
    dense: npt.NDArray[np.float64]
    hashes: Mapping[str, npt.NDArray[np.int64]] | None = None  # precomputed per-item sparse hashes

    def __len__(self) -> int:
        return len(self.item_ids)

    def sparse(self, name: str) -> Sequence[str] | str:
        """A per-item column (a sequence) or a request constant (one string)."""
        if name == "item_id":
            return self.item_ids
        if name == "category":
            return self.categories
        if name == "brand":
            return self.brands
        return self.constants[name]

    def row(self, i: int) -> dict[str, Any]:
        """Item i's features as one dict (what impressions log and models were trained on)."""
        out: dict[str, Any] = {"item_id": self.item_ids[i], "category": self.categories[i],
                               "brand": self.brands[i], **self.constants}
        out.update(zip(DENSE, self.dense[i].tolist(), strict=True))
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [self.row(i) for i in range(len(self))]


def assemble_columns(
    *,
    item_ids: Sequence[str],
    items: ItemColumns,
    retrieval: RetrievalColumns,
    user_features: Mapping[str, Any] | None,
    session_affinity: Mapping[str, float],
    last_viewed: frozenset[str] | set[str],
    context: Mapping[str, str],
    now_ms: int,
    half_life_s: float,
    session: Mapping[str, Any] | None = None,
    taste_sim: npt.NDArray[np.float64] | None = None,
) -> FeatureBatch:
    """All features of one user and context with many items at ``now_ms``. Pure and total:
    missing state gives neutral values, never an error. User-level values are computed once,
    item-level ones as numpy columns. ``session`` is the user's stored session (its event
    counts give the depth); ``taste_sim`` the candidates' ``features.taste`` similarities
    (NaN = unknown; None = all unknown)."""
    uf = user_features or {}
    prefs = uf.get("pref") or {}
    brand_prefs = uf.get("brand") or {}
    user_mean = float(uf.get("price_mean") or 0.0)
    constants = {"surface": context.get("surface", ""), "device": context.get("device", ""),
                 "country": str(uf.get("country") or context.get("country", "")),
                 "user_id": context.get("user_id", "")}
    n = len(item_ids)
    if n != len(items) or n != len(retrieval.covisit):
        raise ValueError(f"{n} item ids, {len(items)} item rows, {len(retrieval.covisit)} retrievals")
    dense = np.zeros((n, len(DENSE)), dtype=np.float64)
    if n == 0:
        return FeatureBatch([], [], [], constants, dense, items.hashes)
    cats, price, views = items.category, items.price, items.views
    known = ~np.isnan(views)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        log_views = np.log1p(np.exp2(np.where(known, views, 0.0) - decay_exponent(now_ms, half_life_s)))
        vs_user = np.log(price / user_mean) if user_mean > 0 else np.zeros(n)
    if prefs:  # map(dict.get): per-item lookups without a Python frame each
        dense[:, COL["u_cat_pref"]] = np.fromiter(map(prefs.get, cats, repeat(0.0)), np.float64, n)
    if session_affinity:
        dense[:, COL["s_cat_aff"]] = np.fromiter(map(session_affinity.get, cats, repeat(0.0)), np.float64, n)
    dense[:, COL["covisit"]] = retrieval.covisit
    dense[:, COL["popular"]] = retrieval.popular
    dense[:, COL["log_views"]] = np.where(known, log_views, 0.0)
    dense[:, COL["item_ctr"]] = items.ctr
    dense[:, COL["item_cvr"]] = items.cvr
    dense[:, COL["log_price"]] = np.log1p(price)
    dense[:, COL["price_vs_user"]] = np.where(price > 0, vs_user, 0.0)
    dense[:, COL["log_user_events"]] = math.log1p(sum(int(v) for v in (uf.get("counts") or {}).values()))
    if last_viewed:
        dense[:, COL["in_session"]] = np.fromiter(map(last_viewed.__contains__, item_ids), np.float64, n)
    dense[:, COL["n_sources"]] = retrieval.n_sources
    if brand_prefs:
        dense[:, COL["u_brand_pref"]] = np.fromiter(map(brand_prefs.get, items.brand, repeat(0.0)),
                                                    np.float64, n)
    if taste_sim is not None:
        known_taste = ~np.isnan(taste_sim)
        dense[:, COL["taste_sim"]] = np.where(known_taste, taste_sim, 0.0)
        dense[:, COL["taste_known"]] = known_taste
    if items.rating is not None:
        dense[:, COL["rating"]] = np.where(items.rating > 0, (items.rating - 3.0) / 2.0, 0.0)
    if items.first_ms is not None:
        age_h = np.maximum(now_ms - items.first_ms, 0.0) / HOUR_MS
        dense[:, COL["log_age_h"]] = np.where(items.first_ms > 0, np.log1p(age_h), 0.0)
    dense[:, [COL["hour_sin"], COL["hour_cos"], COL["dow_sin"], COL["dow_cos"]]] = time_of_week(now_ms)
    last = int(uf.get("last") or 0)
    dense[:, COL["log_idle_h"]] = math.log1p(max(now_ms - last, 0) / HOUR_MS) if last else 0.0
    depth = sum(int(v) for v in ((session or {}).get("counts") or {}).values())
    dense[:, COL["session_depth"]] = math.log1p(depth)
    recent = uf.get("recent") or ()
    if recent:
        rank_weight = {item: HISTORY_DECAY ** r for r, item in enumerate(recent)}
        dense[:, COL["in_history"]] = np.fromiter(map(rank_weight.get, item_ids, repeat(0.0)),
                                                  np.float64, n)
    return FeatureBatch(item_ids, cats, items.brand, constants, dense, items.hashes)


def time_of_week(now_ms: int) -> tuple[float, float, float, float]:
    """(sin, cos) of the UTC hour of day and of the day of week: cyclical, so 23:00 is near 00:00."""
    hours = now_ms / HOUR_MS
    day = 2 * math.pi * (hours % 24.0) / 24.0
    week = 2 * math.pi * (hours % 168.0) / 168.0
    return math.sin(day), math.cos(day), math.sin(week), math.cos(week)


def assemble_batch(
    *,
    item_ids: Sequence[str],
    catalogs: Sequence[Mapping[str, Any] | None],
    item_stats: Sequence[Mapping[str, Any] | None],
    retrievals: Sequence[Mapping[str, float]] | RetrievalColumns,
    user_features: Mapping[str, Any] | None,
    session_affinity: Mapping[str, float],
    last_viewed: frozenset[str] | set[str],
    context: Mapping[str, str],
    now_ms: int,
    half_life_s: float,
    session: Mapping[str, Any] | None = None,
    taste_sim: npt.NDArray[np.float64] | None = None,
) -> list[dict[str, Any]]:
    """``assemble_columns`` from stored catalog rows and stats, as one dict per item (the
    offline training-set builder's entry point)."""
    items = ItemColumns.from_rows([item_row(c, s) for c, s in zip(catalogs, item_stats, strict=True)])
    return assemble_columns(item_ids=item_ids, items=items,
                            retrieval=retrievals if isinstance(retrievals, RetrievalColumns)
                            else RetrievalColumns.from_mappings(retrievals),
                            user_features=user_features, session_affinity=session_affinity,
                            last_viewed=last_viewed, context=context, now_ms=now_ms,
                            half_life_s=half_life_s, session=session, taste_sim=taste_sim).rows()


def assemble(
    *,
    item_id: str,
    catalog: Mapping[str, Any] | None,
    item_stats: Mapping[str, Any] | None,
    user_features: Mapping[str, Any] | None,
    session_affinity: Mapping[str, float],
    last_viewed: frozenset[str] | set[str],
    retrieval: Mapping[str, float],
    context: Mapping[str, str],
    now_ms: int,
    half_life_s: float,
    session: Mapping[str, Any] | None = None,
    taste_sim: float = math.nan,
) -> dict[str, Any]:
    """The features of one (user, item, context): ``assemble_batch`` with one item."""
    return assemble_batch(item_ids=[item_id], catalogs=[catalog], item_stats=[item_stats],
                          retrievals=[retrieval], user_features=user_features,
                          session_affinity=session_affinity, last_viewed=last_viewed,
                          context=context, now_ms=now_ms, half_life_s=half_life_s,
                          session=session, taste_sim=np.array([taste_sim]))[0]
