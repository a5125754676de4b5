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
from collections.abc import Mapping
from typing import Any

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


def _log1p_decayed(log2_score: float | None, now_ms: int, half_life_s: float) -> float:
    if log2_score is None:
        return 0.0
    from streams.features import decayed_value  # pure; shared with the dataflow

    return math.log1p(decayed_value(log2_score, now_ms, half_life_s))


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
    """All features of one (user, item, context) at ``now_ms``. Pure and total: missing state
    gives neutral values, never an error."""
    cat = catalog or {}
    stats = item_stats or {}
    uf = user_features or {}
    category = str(cat.get("category") or stats.get("cat") or "")
    price = float(cat.get("price") or stats.get("price") or 0.0)
    user_mean = float(uf.get("price_mean") or 0.0)
    counts = uf.get("counts") or {}
    return {
        "item_id": item_id,
        "category": category,
        "brand": str(cat.get("brand") or stats.get("brand") or ""),
        "surface": context.get("surface", ""),
        "device": context.get("device", ""),
        "country": str(uf.get("country") or context.get("country", "")),
        "u_cat_pref": float((uf.get("pref") or {}).get(category, 0.0)),
        "s_cat_aff": float(session_affinity.get(category, 0.0)),
        "covisit": float(retrieval.get("covisit", 0.0)),
        "popular": float(max(retrieval.get("popular", 0.0), retrieval.get("top_sellers", 0.0))),
        "log_views": _log1p_decayed(stats.get("views"), now_ms, half_life_s),
        "item_ctr": float(stats.get("ctr", 0.02)),
        "item_cvr": float(stats.get("cvr", 0.05)),
        "log_price": math.log1p(price),
        "price_vs_user": math.log(price / user_mean) if price > 0 and user_mean > 0 else 0.0,
        "log_user_events": math.log1p(sum(int(v) for v in counts.values())),
        "in_session": 1.0 if item_id in last_viewed else 0.0,
        "n_sources": float(len(retrieval)),
    }


def dense_vector(features: Mapping[str, Any]) -> list[float]:
    return [float(features.get(name, 0.0)) for name in DENSE]


def sparse_values(features: Mapping[str, Any]) -> list[str]:
    return [str(features.get(name, "")) for name in SPARSE]
