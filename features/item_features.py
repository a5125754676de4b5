"""Item state as pure functions: catalog fields, decayed counts, smoothed rates, trending.

One item's state is keyed by item id in the dataflow; the same functions build it offline.
Counts are forward-decayed log2 scores (see ``features.sessions``), so the ratio of two counts
with the same half-life (CTR, CVR) does not depend on when it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from features.decay import decay_add, decayed_value

EVENT_FIELDS = {"view": "views", "click": "clicks", "add_to_cart": "carts", "purchase": "purchases",
                "impression": "impressions"}


def smoothed_rate(successes: float, trials: float, prior_rate: float, prior_strength: float) -> float:
    """Bayesian (Beta prior) smoothed rate: a new item is neither 0 nor 1."""
    return (successes + prior_rate * prior_strength) / (trials + prior_strength)


@dataclass(frozen=True)
class ItemParams:
    half_life_s: float  # counts and popularity
    trend_half_life_s: float  # trending: short horizon
    ctr_prior: float = 0.02
    cvr_prior: float = 0.05
    prior_strength: float = 20.0


@dataclass(slots=True)
class ItemState:
    """Forward-decayed log2 counts per event type (None = never seen), catalog, totals.

    A value: the functions here return a new state and never change one they were given (not
    ``frozen`` only because a frozen dataclass costs ~5x as much to create, once per event)."""

    impressions: float | None = None
    views: float | None = None
    clicks: float | None = None
    carts: float | None = None
    purchases: float | None = None
    trend: float | None = None  # log2 decayed views + clicks, short half-life
    n_events: int = 0
    last_ms: int = 0
    category: str = ""
    brand: str = ""
    price: float = 0.0
    active: bool = True
    catalog_ms: int = 0  # updated_ms of the catalog row applied (newest wins); 0 = none yet
    # user-side events that arrived before the item's catalog row, held (bounded) until it
    # arrives so the catalog join does not depend on topic interleaving:
    # (user_id, etype, ts_ms, price, ingest_ms)
    held: tuple[tuple[str, str, int, float, int], ...] = ()
    first_ms: int = 0  # updated_ms of the earliest catalog row applied (the item's age); 0 = none

    def copy(self) -> ItemState:
        return ItemState(self.impressions, self.views, self.clicks, self.carts, self.purchases,
                         self.trend, self.n_events, self.last_ms, self.category, self.brand,
                         self.price, self.active, self.catalog_ms, self.held, self.first_ms)

    def decayed(self, name: str, now_ms: int, half_life_s: float) -> float:
        return decayed_value(getattr(self, name), now_ms, half_life_s)

    def to_dict(self, p: ItemParams) -> dict[str, Any]:
        """The value stored in Redis: log scores (time-invariant) and rates as of last event."""
        t, h = self.last_ms, p.half_life_s
        imps, clicks = self.decayed("impressions", t, h), self.decayed("clicks", t, h)
        purch = self.decayed("purchases", t, h)
        return {
            "imp": self.impressions, "views": self.views, "clicks": self.clicks,
            "carts": self.carts, "purch": self.purchases, "trend": self.trend,
            "n": self.n_events, "last": self.last_ms,
            "ctr": smoothed_rate(clicks, imps, p.ctr_prior, p.prior_strength),
            "cvr": smoothed_rate(purch, clicks, p.cvr_prior, p.prior_strength),
            "cat": self.category, "brand": self.brand, "price": self.price,
        }


def apply_event(st: ItemState | None, etype: str, ts_ms: int, p: ItemParams, quantity: int = 1
                ) -> ItemState:
    """Add one event. Order-independent (commutative up to float rounding)."""
    st = st or ItemState()
    name = EVENT_FIELDS.get(etype)
    if name is None:
        return st
    weight = float(max(quantity, 1)) if etype == "purchase" else 1.0
    new = st.copy()
    setattr(new, name, decay_add(getattr(st, name), ts_ms, p.half_life_s, weight))
    if etype in ("view", "click"):
        new.trend = decay_add(st.trend, ts_ms, p.trend_half_life_s)
    new.n_events = st.n_events + 1
    new.last_ms = max(st.last_ms, ts_ms)
    return new


def apply_catalog(st: ItemState | None, *, category: str, brand: str, price: float, active: bool,
                  updated_ms: int) -> ItemState:
    """Apply a catalog upsert; an older row than the one applied is ignored (out of order)."""
    st = st or ItemState()
    if updated_ms < st.catalog_ms:
        return st
    new = st.copy()
    new.category, new.brand, new.price, new.active = category, brand, price, active
    new.catalog_ms = updated_ms
    new.first_ms = min(st.first_ms, updated_ms) if st.first_ms else updated_ms
    return new
