"""User features as pure functions: decayed category and brand preferences, recent items,
price sensitivity, counts.

Category (and brand) preference: per category (brand) a forward-decayed log2 weight (view 1,
click 2, cart 3, purchase 5) with a half-life (7 days default); those whose weight has decayed
below one view as old as the horizon are pruned. Recent items: the ``recent_n`` distinct
items the user touched last (by event time; order-independent), newest first (the ranker's
taste feature pools their vectors). Price sensitivity: mean and spread of purchase prices
(Welford's online algorithm). Profile fields come from the ``users`` topic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from features.decay import decay_add, decay_exponent
from features.sessions import count_inc

EVENT_WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}


@dataclass(frozen=True)
class UserParams:
    half_life_s: float = 7 * 24 * 3600.0
    horizon_s: float = 30 * 24 * 3600.0
    max_categories: int = 50  # also the number of brands kept
    recent_n: int = 20  # distinct recent items kept (newest first)


@dataclass(slots=True)
class UserFeatures:
    """A value: the functions here return a new one and never change one they were given (not
    ``frozen`` only because a frozen dataclass costs ~5x as much to create, once per event)."""

    cat_pref: tuple[tuple[str, float], ...] = ()  # category -> log2 decayed weight
    purchase_n: int = 0
    price_mean: float = 0.0
    price_m2: float = 0.0
    counts: tuple[tuple[str, int], ...] = ()
    last_ms: int = 0
    country: str = ""
    age_bucket: str = ""
    signup_ms: int = 0
    profile_ms: int = 0
    brand_pref: tuple[tuple[str, float], ...] = ()  # brand -> log2 decayed weight
    recent: tuple[tuple[str, int], ...] = ()  # (item, its latest event time), newest first

    def copy(self) -> UserFeatures:
        return UserFeatures(self.cat_pref, self.purchase_n, self.price_mean, self.price_m2,
                            self.counts, self.last_ms, self.country, self.age_bucket,
                            self.signup_ms, self.profile_ms, self.brand_pref, self.recent)

    def preferences(self, now_ms: int, p: UserParams) -> dict[str, float]:
        """Normalised category distribution as of ``now_ms``."""
        return _distribution(self.cat_pref, now_ms, p)

    def brand_preferences(self, now_ms: int, p: UserParams) -> dict[str, float]:
        """Normalised brand distribution as of ``now_ms``."""
        return _distribution(self.brand_pref, now_ms, p)

    @property
    def price_std(self) -> float:
        return math.sqrt(self.price_m2 / (self.purchase_n - 1)) if self.purchase_n > 1 else 0.0

    def to_dict(self, p: UserParams) -> dict[str, Any]:
        return {
            "pref": self.preferences(self.last_ms, p), "price_mean": self.price_mean,
            "price_std": self.price_std, "purchases": self.purchase_n, "counts": dict(self.counts),
            "last": self.last_ms, "country": self.country, "age": self.age_bucket,
            "signup": self.signup_ms, "brand": self.brand_preferences(self.last_ms, p),
            "recent": [item for item, _ in self.recent],
        }


def _distribution(weights: tuple[tuple[str, float], ...], now_ms: int, p: UserParams
                  ) -> dict[str, float]:
    if not weights:
        return {}
    base = decay_exponent(now_ms, p.half_life_s)
    raw = {c: 2.0 ** (s - base) for c, s in weights}
    total = sum(raw.values())
    return {c: w / total for c, w in sorted(raw.items())} if total > 0 else {}


def apply_event(u: UserFeatures | None, *, etype: str, ts_ms: int, category: str, price: float,
                p: UserParams, item_id: str = "", brand: str = "") -> UserFeatures:
    u = u or UserFeatures()
    new = u.copy()
    new.counts = count_inc(u.counts, etype)
    new.last_ms = max(u.last_ms, ts_ms)
    weight = EVENT_WEIGHTS.get(etype)
    if weight and category:
        prefs = dict(u.cat_pref)
        prefs[category] = decay_add(prefs.get(category), ts_ms, p.half_life_s, weight)
        new.cat_pref = _prune(prefs, new.last_ms, p)
    if weight and brand:
        brands = dict(u.brand_pref)
        brands[brand] = decay_add(brands.get(brand), ts_ms, p.half_life_s, weight)
        new.brand_pref = _prune(brands, new.last_ms, p)
    if weight and item_id:
        new.recent = _recent(u.recent, item_id, ts_ms, p.recent_n)
    if etype == "purchase" and price > 0:
        n = u.purchase_n + 1
        delta = price - u.price_mean
        mean = u.price_mean + delta / n
        new.purchase_n, new.price_mean = n, mean
        new.price_m2 = u.price_m2 + delta * (price - mean)
    return new


def _recent(recent: tuple[tuple[str, int], ...], item_id: str, ts_ms: int, n: int
            ) -> tuple[tuple[str, int], ...]:
    """The n items with the latest event times (each item's latest), newest first; ties by
    item id. Order-independent: late and out-of-order events give the same list."""
    latest = dict(recent)
    if latest.get(item_id, -1) >= ts_ms:
        return recent
    latest[item_id] = ts_ms
    return tuple(sorted(latest.items(), key=lambda kv: (-kv[1], kv[0]))[:n])


def _prune(prefs: dict[str, float], now_ms: int, p: UserParams) -> tuple[tuple[str, float], ...]:
    """Drop categories weighing less than one view as old as the horizon; cap the count.
    (Sorted by category: a canonical form, so equal states compare and encode equal.)"""
    floor = decay_exponent(now_ms, p.half_life_s) - p.horizon_s / p.half_life_s
    if len(prefs) <= p.max_categories and min(prefs.values()) >= floor:  # the common case
        return tuple(sorted(prefs.items()))
    kept = {c: s for c, s in prefs.items() if s >= floor}
    top = sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))[: p.max_categories]
    return tuple(sorted(top))


def apply_profile(u: UserFeatures | None, *, country: str, age_bucket: str, signup_ms: int,
                  updated_ms: int) -> UserFeatures:
    u = u or UserFeatures()
    if updated_ms < u.profile_ms:
        return u
    new = u.copy()
    new.country, new.age_bucket, new.signup_ms, new.profile_ms = (country, age_bucket, signup_ms,
                                                                  updated_ms)
    return new
