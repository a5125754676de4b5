"""The feature dataflow's step functions: pure ``(state, input) -> (state, outputs)``.

The dataflow (``streams.features_flow``) wires them; the offline builder
(``features.offline_builder``) runs the very same functions over an event log, so online and offline
features cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

from core.settings import Settings
from features import covisitation as CV
from features import item_features as IF
from features import sessions as F
from features import step_counters as metrics
from features import user_features as UF
from features.events import Ev, Rejected
from features.writes import Lazy, Write
from proto import codecs
from proto.keys import Keys

# --- records flowing between steps -------------------------------------------------------
# Values: never changed once made. The per-event ones are not ``frozen`` only because a frozen
# dataclass costs ~5x as much to create.


@dataclass(slots=True)
class Touch:
    """An accepted (de-duplicated) event as seen by one item."""

    item_id: str
    user_id: str  # "" for impressions logged by the scorer
    etype: str
    ts_ms: int
    quantity: int
    price: float
    ingest_ms: int


@dataclass(frozen=True, slots=True)
class CatalogRow:
    item_id: str
    title: str
    category: str
    brand: str
    price: float
    rating: float
    active: bool
    updated_ms: int
    ingest_ms: int


@dataclass(slots=True)
class UserTouch:
    """An event enriched with its item's catalog fields, on its way to the user's features."""

    user_id: str
    etype: str
    ts_ms: int
    category: str
    price: float
    ingest_ms: int
    item_id: str = ""
    brand: str = ""


@dataclass(frozen=True, slots=True)
class ProfileRow:
    user_id: str
    country: str
    age_bucket: str
    signup_ms: int
    updated_ms: int
    ingest_ms: int


@dataclass(slots=True)
class CoVisits:
    """The co-visitations one accepted event created: ``(src, dst, weight)`` triples."""

    pairs: tuple[tuple[str, str, float], ...]
    ts_ms: int
    ingest_ms: int


@dataclass(slots=True)
class Pair:
    """Co-visitations of one source item: ``src`` was seen near each ``dst`` with a weight, at
    an event time (``combine_pairs`` makes one per source item from a batch of ``CoVisits``)."""

    src: str
    dsts: tuple[tuple[str, float, int], ...]  # (dst, weight, event time ms)
    ingest_ms: int


def combine_pairs(covisits: list[CoVisits]) -> list[Pair]:
    """Map-side combine: one record per source item (fewer keyed records for hot items), its
    destinations in arrival order."""
    by_src: dict[str, tuple[list[tuple[str, float, int]], int]] = {}
    for c in covisits:
        for src, dst, weight in c.pairs:
            got = by_src.get(src)
            if got is None:
                by_src[src] = ([(dst, weight, c.ts_ms)], c.ingest_ms)
            else:
                got[0].append((dst, weight, c.ts_ms))
                if c.ingest_ms < got[1]:
                    by_src[src] = (got[0], c.ingest_ms)
    return [Pair(src, tuple(dsts), ingest) for src, (dsts, ingest) in by_src.items()]


Out = Write | Touch | CoVisits | Rejected | UserTouch


@dataclass(frozen=True)
class StepConfig:
    keys: Keys
    gap_s: float
    last_n: int
    covisit_half_life_s: float
    covisit_max: int
    covisit_window: int
    lateness_ms: int
    item: IF.ItemParams
    user: UF.UserParams

    @cached_property
    def popular_key(self) -> str:
        return self.keys.popular()

    @cached_property
    def top_sellers_key(self) -> str:
        return self.keys.top_sellers()

    @cached_property
    def item_log(self) -> str:
        return self.keys.item_changelog()

    @classmethod
    def from_settings(cls, s: Settings) -> StepConfig:
        return cls(
            keys=Keys(s.redis_prefix), gap_s=s.session_gap_s, last_n=s.last_n_viewed,
            covisit_half_life_s=s.popularity_half_life_s, covisit_max=s.covisit_max_per_item,
            covisit_window=s.covisit_window, lateness_ms=int(s.allowed_lateness_s * 1000),
            item=IF.ItemParams(s.popularity_half_life_s, s.trend_half_life_s, s.ctr_prior,
                               s.cvr_prior, s.rate_prior_strength),
            user=UF.UserParams(s.user_pref_half_life_s, s.user_pref_horizon_s),
        )


# --- keyed by user: sessions, de-duplication, lateness ----------------------------------


def sessionize(cfg: StepConfig, state: F.SessionState | None, ev: Ev
               ) -> tuple[F.SessionState | None, list[Out]]:
    if state is not None and ev.ts_ms < state.last_ms - cfg.lateness_ms:
        late_by = (state.last_ms - ev.ts_ms) / 1000
        return state, [Rejected(f"late event: {late_by:.0f}s older than the user's latest event "
                                f"(allowed lateness {cfg.lateness_ms / 1000:.0f}s)",
                                b"", ev.event_id, ev.partition, ev.offset, stage="sessionize")]
    upd = F.update_session(
        state, event_id=ev.event_id, user_id=ev.user_id, ts_ms=ev.ts_ms, etype=ev.type,
        item_id=ev.item_id, gap_s=cfg.gap_s, last_n=cfg.last_n, covisit_window=cfg.covisit_window,
    )
    if upd.duplicate:
        metrics.DUPLICATES.inc()
        return upd.state, []
    out: list[Out] = [Write("set", cfg.keys.session(ev.user_id), Lazy(_encode_session, upd.state),
                            ev.ingest_ms, "session")]
    if ev.type == "purchase":
        out.append(Write("sadd", cfg.keys.user_purchased(ev.user_id), ev.item_id, ev.ingest_ms,
                         "purchased"))
    if ev.item_id:
        out.append(Touch(ev.item_id, ev.user_id, ev.type, ev.ts_ms, ev.quantity, ev.price,
                         ev.ingest_ms))
    if upd.pairs:
        out.append(CoVisits(upd.pairs, ev.ts_ms, ev.ingest_ms))
    return upd.state, out


# --- keyed by item: catalog join, counts, rates, popularity, trending --------------------


# the item scores an event type changes, i.e. the ZSET entries it needs to rewrite
ALL_SCORES = ("views", "purchases", "trend")
CHANGED_SCORES = {"view": ("views", "trend"), "click": ("trend",), "purchase": ("purchases",)}


def _zsets(cfg: StepConfig, item_id: str, st: IF.ItemState, ingest_ms: int,
           scores: tuple[str, ...] = ALL_SCORES) -> list[Write]:
    """The item's entries in the popularity, top-seller and trending ZSETs (those of ``scores``),
    or its removal from all of them if it is inactive."""
    k = cfg.keys
    if not st.active:
        return [Write("zrem", zkey, item_id, ingest_ms, "inactive")
                for zkey in (cfg.popular_key, cfg.top_sellers_key, k.trending(st.category))]
    out = []
    if st.views is not None and "views" in scores:
        out.append(Write("zadd", cfg.popular_key, {item_id: st.views}, ingest_ms, "popular"))
    if st.purchases is not None and "purchases" in scores:
        out.append(Write("zadd", cfg.top_sellers_key, {item_id: st.purchases}, ingest_ms,
                         "top_sellers"))
    if st.trend is not None and st.category and "trend" in scores:
        out.append(Write("zadd", k.trending(st.category), {item_id: st.trend}, ingest_ms, "trending"))
    return out


# per item: user events waiting for the item's first catalog row. A compacted catalog topic is
# loaded at startup while the clickstream backlog is read too, so hot items can collect many
# events before their row arrives; past this bound events go on without a category (counted).
MAX_HELD = 10_000
NEW_ITEMS_KEPT = 1000  # size of the newest-items pool


def _release(item_id: str, st: IF.ItemState) -> list[UserTouch]:
    return [UserTouch(user, etype, ts, st.category, price if price > 0 else st.price, ingest,
                      item_id, st.brand)
            for user, etype, ts, price, ingest in st.held]


def item_step(cfg: StepConfig, st: IF.ItemState | None, x: Touch | CatalogRow
              ) -> tuple[IF.ItemState, list[Write | UserTouch]]:
    k = cfg.keys
    if isinstance(x, CatalogRow):
        old_cat = st.category if st else ""
        new = IF.apply_catalog(st, category=x.category, brand=x.brand, price=x.price,
                               active=x.active, updated_ms=x.updated_ms)
        if new is st:  # an older row than the one applied
            return new, []
        released = _release(x.item_id, new)
        first_row = not (st and st.catalog_ms)
        new = replace(new, held=())
        row = codecs.encode({"title": x.title, "category": x.category, "brand": x.brand,
                             "price": x.price, "rating": x.rating, "active": x.active,
                             "updated": x.updated_ms, "first": new.first_ms})
        out: list[Write | UserTouch] = [Write("set", k.item_catalog(x.item_id), row, x.ingest_ms,
                                              "catalog")]
        if first_row and x.active:  # a new item: into the (trimmed) newest-items pool
            out.append(Write("zadd", k.new_items(), {x.item_id: float(x.updated_ms)}, x.ingest_ms,
                             "new_items"))
            out.append(Write("ztrim", k.new_items(), NEW_ITEMS_KEPT, x.ingest_ms, "new_items"))
        if new.n_events:  # the stats record carries catalog fields too: keep it current
            out.append(Write("set", k.item_features(x.item_id), Lazy(_encode_item, new, cfg.item),
                             x.ingest_ms, "item_stats"))
        if old_cat and old_cat != x.category:
            out.append(Write("zrem", k.trending(old_cat), x.item_id, x.ingest_ms, "trending"))
        out.extend(_zsets(cfg, x.item_id, new, x.ingest_ms))
        out.append(Write("notify", cfg.item_log, x.item_id, x.ingest_ms, "item_changes"))
        return new, out + released
    new = IF.apply_event(st, x.etype, x.ts_ms, cfg.item, x.quantity)
    out = [Write("set", k.item_features(x.item_id), Lazy(_encode_item, new, cfg.item),
                 x.ingest_ms, "item_stats"),
           Write("notify", cfg.item_log, x.item_id, x.ingest_ms, "item_changes")]
    scores = CHANGED_SCORES.get(x.etype)
    if scores:  # the scores this event changed (the others were written already)
        out.extend(_zsets(cfg, x.item_id, new, x.ingest_ms, scores))
    if x.user_id:
        if not new.catalog_ms:  # catalog row not here yet: hold
            if len(new.held) < MAX_HELD:
                held = new.copy()
                held.held = (*new.held, (x.user_id, x.etype, x.ts_ms, x.price, x.ingest_ms))
                return held, out
            metrics.UNCATALOGUED.inc()
        price = x.price if x.price > 0 else new.price
        out.append(UserTouch(x.user_id, x.etype, x.ts_ms, new.category, price, x.ingest_ms,
                             x.item_id, new.brand))
    return new, out


# --- keyed by user: features (enriched events + profile rows) ----------------------------


def user_step(cfg: StepConfig, st: UF.UserFeatures | None, x: UserTouch | ProfileRow
              ) -> tuple[UF.UserFeatures, list[Write]]:
    if isinstance(x, ProfileRow):
        new = UF.apply_profile(st, country=x.country, age_bucket=x.age_bucket,
                               signup_ms=x.signup_ms, updated_ms=x.updated_ms)
    else:
        new = UF.apply_event(st, etype=x.etype, ts_ms=x.ts_ms, category=x.category, price=x.price,
                             p=cfg.user, item_id=x.item_id, brand=x.brand)
    if new is st:
        return new, []
    return new, [Write("set", cfg.keys.user_features(x.user_id), Lazy(_encode_user, new, cfg.user),
                       x.ingest_ms, "user_features")]


# --- keyed by source item: co-visitation -------------------------------------------------


def covisit_step(cfg: StepConfig, state: dict[str, float] | None, p: Pair
                 ) -> tuple[dict[str, float], list[Write]]:
    new = CV.update_covisit(state, p.dsts, cfg.covisit_half_life_s, cfg.covisit_max)
    # the top-N is computed only for the write actually flushed (hot items get many pairs)
    return new, [Write("zreplace", cfg.keys.covisit(p.src), Lazy(_top_n, new, cfg.covisit_max),
                       p.ingest_ms, "covisit")]


# --- lazy value encoders (module level: pending writes are pickled in snapshots) ---------


def _encode_session(st: F.SessionState) -> bytes:
    return codecs.encode(st.to_dict())


def _encode_item(st: IF.ItemState, p: IF.ItemParams) -> bytes:
    return codecs.encode(st.to_dict(p))


def _encode_user(st: UF.UserFeatures, p: UF.UserParams) -> bytes:
    return codecs.encode(st.to_dict(p))


def _top_n(scores: dict[str, float], n: int) -> dict[str, float]:
    return dict(CV.top_items(scores, n))
