"""Ranking features, assembled by ONE pure function used everywhere.

The scorer calls ``assemble`` for every candidate at serve time and logs the result with the
impression; the label join copies it into each training example; the offline training-set
builder calls the same function on state built by the same step functions. So a model is
trained on exactly the features it is served with.

``SPARSE`` features are strings (hashed into embedding tables by the models), ``DENSE`` are
floats (already scaled to roughly unit range). ``FEATURE_VERSION`` goes into model configs:
a model refuses features of another version.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from streams.features import decay_exponent  # pure; shared with the dataflow

FEATURE_VERSION = 1

SPARSE = ("item_id", "category", "brand", "surface", "device", "country")
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
)


def assemble_batch(
    *,
    item_ids: Sequence[str],
    catalogs: Sequence[Mapping[str, Any] | None],
    item_stats: Sequence[Mapping[str, Any] | None],
    retrievals: Sequence[Mapping[str, float]],
    user_features: Mapping[str, Any] | None,
    session_affinity: Mapping[str, float],
    last_viewed: frozenset[str] | set[str],
    context: Mapping[str, str],
    now_ms: int,
    half_life_s: float,
) -> list[dict[str, Any]]:
    """All features of one user and context with many items at ``now_ms``. Pure and total:
    missing state gives neutral values, never an error. User-level values are computed once."""
    uf = user_features or {}
    prefs = uf.get("pref") or {}
    user_mean = float(uf.get("price_mean") or 0.0)
    log_user_events = math.log1p(sum(int(v) for v in (uf.get("counts") or {}).values()))
    country = str(uf.get("country") or context.get("country", ""))
    surface, device = context.get("surface", ""), context.get("device", "")
    now_exp = decay_exponent(now_ms, half_life_s)
    out = []
    for item_id, cat, stats, retrieval in zip(item_ids, catalogs, item_stats, retrievals, strict=True):
        cat = cat or {}
        stats = stats or {}
        category = str(cat.get("category") or stats.get("cat") or "")
        price = float(cat.get("price") or stats.get("price") or 0.0)
        views = stats.get("views")
        out.append({
            "item_id": item_id,
            "category": category,
            "brand": str(cat.get("brand") or stats.get("brand") or ""),
            "surface": surface,
            "device": device,
            "country": country,
            "u_cat_pref": float(prefs.get(category, 0.0)),
            "s_cat_aff": float(session_affinity.get(category, 0.0)),
            "covisit": float(retrieval.get("covisit", 0.0)),
            "popular": float(max(retrieval.get("popular", 0.0), retrieval.get("top_sellers", 0.0))),
            "log_views": math.log1p(2.0 ** (views - now_exp)) if views is not None else 0.0,
            "item_ctr": float(stats.get("ctr", 0.02)),
            "item_cvr": float(stats.get("cvr", 0.05)),
            "log_price": math.log1p(price),
            "price_vs_user": math.log(price / user_mean) if price > 0 and user_mean > 0 else 0.0,
            "log_user_events": log_user_events,
            "in_session": 1.0 if item_id in last_viewed else 0.0,
            "n_sources": float(len(retrieval)),
        })
    return out


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
) -> dict[str, Any]:
    """The features of one (user, item, context): ``assemble_batch`` with one item."""
    return assemble_batch(item_ids=[item_id], catalogs=[catalog], item_stats=[item_stats],
                          retrievals=[retrieval], user_features=user_features,
                          session_affinity=session_affinity, last_viewed=last_viewed,
                          context=context, now_ms=now_ms, half_life_s=half_life_s)[0]


def dense_vector(features: Mapping[str, Any]) -> list[float]:
    return [float(features.get(name, 0.0)) for name in DENSE]


def sparse_values(features: Mapping[str, Any]) -> list[str]:
    return [str(features.get(name, "")) for name in SPARSE]
