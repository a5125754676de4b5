"""Simulated ranking training sets (``simulate`` -> ``models.ranking_dataset.RankingData``),
built through the production code paths.

Simulator data: the project's own closed-loop shop (``sim.shop.Shop`` on the
seeded ``sim.world.World``, configured by ``sim.config``) runs on a ``VirtualClock``: sessions,
browsing views by the hidden taste, catalog dynamics, homepage visits, clicks / carts drawn from
the hidden truth with position bias, purchases hours to days later. Only three things differ
from the live loop (``sim.simulator``):

* the ``Sink`` feeds every record, in sim-time order as the shop emits it, straight into the
  dataflow's own step functions (``features.offline_builder.OfflineBuilder``) instead of Kafka;
* the ``Recommender`` is offline: at the visit's sim time it reads the user's and the items'
  state from the builder's image (msgpack values, ``proto.keys.Keys``, ``proto.codecs``),
  retrieves candidates with the scorer's own functions (``online.candidates``: co-visitation of the
  last-5 viewed, the user's recent items (history), trending in the user's top two categories,
  popular, top sellers; merged, de-duplicated, purchased items excluded), picks ``k`` of them
  uniformly at random, assembles their features with
  ``features.ranking_features.assemble_batch``, shows them in the order
  ``TrainingSetConfig.shown_order`` says and logs the impression (item CTR counts).
  ``"random"`` (default): uniformly random order (uniform exploration: position is
  independent of the features). ``"ranked"``: a logging policy, the scorer's cold-start
  ``online.ranking.HeuristicRanker`` logit on the logged features plus Gaussian noise
  (``shown_noise``), highest first: position is confounded with the features, as in logs of a
  deployed ranker (what position debiasing, ``models.position_bias``, is for).
* the taste feature's item vectors come from ``sim.session_vectors`` (the same incremental
  item2vec on the same kind of view windows) instead of the embeddings dataflow's replica.

Because the shop emits everything due before a visit before calling the recommender, the
state read at an impression is the state as of that moment (point in time), never later.
Labels are joined from the shop's own click / add-to-cart / purchase events by
``(request_id, item)`` with the label join's attribution windows (click 30 min, purchase
7 days). Rows are recorded for visits in ``[start + warmup_days, start + days)``; the shop then
runs one more purchase window so every attributable purchase of a recorded impression is seen
(``purchase_delay_ms`` says when; ``observed_purchases`` gives what a trainer at an earlier
cutoff would have seen). Use ``time_split`` (time order, never random).
"""

from __future__ import annotations

import dataclasses
import heapq
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.settings import Settings
from features.events import TYPE_NAMES
from features.offline_builder import OfflineBuilder
from features.ranking_features import DENSE, SPARSE, assemble_batch, item_row
from features.taste import history_items, taste_similarity
from models.deepfm import FeatureHasher
from models.ranking_dataset import DAY_MS, LABELS, RankingData
from online.candidates import category_affinity, combine_related, merge_candidates
from online.ranking import HeuristicRanker
from online.retrieval import HistorySource, history_rows
from proto import codecs, events_pb2
from proto.keys import Keys
from sim.clock import VirtualClock
from sim.config import WorldConfig, load_config
from sim.session_vectors import SessionVectors
from sim.shop import Served, Shop, context, item_upsert, user_profile
from sim.world import User, World

SHOWN_ORDERS = ("random", "ranked")


@dataclass(frozen=True)
class TrainingSetConfig:
    """The training-set run; the world itself (size, seed, truth) is ``sim.config``."""

    days: float = 12.0  # recorded period (warm-up included)
    warmup_days: float = 2.0  # the state fills up; no rows recorded
    sessions_per_h: float = 60.0  # shopper arrivals (modulated by the hour of day)
    candidates: int = 200  # retrieval cap per request
    refresh_s: float = 600.0  # global lists (popular, top sellers, trending) re-read this often
    start_ms: int = 1_700_000_000_000
    click_window_s: float = 30 * 60.0  # attribution (label join defaults)
    purchase_window_s: float = 7 * 86400.0
    shown_order: str = "random"  # "random" | "ranked" (a logging policy; see the module docstring)
    shown_noise: float = 1.0  # "ranked": sd of the noise added to the policy's logit
    taste_vectors: bool = True  # learn item2vec from the views (sim.session_vectors): taste feature

    def __post_init__(self) -> None:
        if self.shown_order not in SHOWN_ORDERS:
            raise ValueError(f"shown_order must be one of {SHOWN_ORDERS}, got {self.shown_order!r}")


def _top(z: dict[str, float] | None, n: int) -> list[tuple[str, float]]:
    if not z:
        return []
    return heapq.nlargest(n, z.items(), key=lambda kv: (kv[1], kv[0]))


class _Builder:
    """The shop's ``Sink`` (records into the builder, labels joined) and its ``Recommender``."""

    def __init__(self, cfg: TrainingSetConfig, world: World, settings: Settings,
                 keep_log: list[tuple[int, str, bytes]] | None) -> None:
        self.cfg, self.world, self.s = cfg, world, settings
        self.clock = VirtualClock(cfg.start_ms)
        self.rng = np.random.default_rng([world.seed, 77])
        self.builder = OfflineBuilder(settings)
        self.keys = Keys(settings.redis_prefix)
        self.log = keep_log
        self.fed = self.requests = 0
        self.record_from = cfg.start_ms + int(cfg.warmup_days * DAY_MS)
        self.record_to = cfg.start_ms + int(cfg.days * DAY_MS)
        self.lists: dict[str, tuple[int, list[tuple[str, float]]]] = {}
        self.hasher = FeatureHasher()
        self.sample: list[dict[str, Any]] = []  # the latest feature dicts (latency benchmarks)
        self.rows: dict[str, list[Any]] = {k: [] for k in ("sparse", "dense", "times", "request",
                                                           "position", "p_click", "item")}
        self.labels: list[list[float]] = []
        self.delay: list[int] = []
        self.served: dict[tuple[str, str], int] = {}  # (request_id, item) -> row
        self.vectors = SessionVectors(settings.embedding_dim) if cfg.taste_vectors else None

    # --- Sink ---------------------------------------------------------------------------------
    def _feed(self, topic: str, value: bytes) -> None:
        ts = self.clock.now_ms()
        self.builder.feed(topic, value, offset=self.fed, ts_ms=ts)
        self.fed += 1
        if self.log is not None:
            self.log.append((ts, topic, value))

    def event(self, user_id: str, value: bytes) -> None:
        self._feed("clickstream", value)
        ev = events_pb2.Event()
        ev.ParseFromString(value)
        if self.vectors is not None and ev.type == events_pb2.VIEW:
            self.vectors.observe(ev.user_id, ev.item_id)
        col = LABELS.get(TYPE_NAMES.get(ev.type, ""), -1)
        row = self.served.get((ev.request_id, ev.item_id)) if ev.request_id and col >= 0 else None
        if row is None:
            return
        delay = ev.event_time_ms - int(self.rows["times"][row])
        window = self.cfg.click_window_s if col == 0 else self.cfg.purchase_window_s
        if 0 <= delay <= window * 1000 and not self.labels[row][col]:
            self.labels[row][col] = 1.0
            if col == 2:
                self.delay[row] = delay

    def catalog(self, item_id: str, value: bytes) -> None:
        self._feed("catalog", value)

    def profile(self, user_id: str, value: bytes) -> None:
        self._feed("users", value)

    # --- Recommender --------------------------------------------------------------------------
    def global_list(self, key: str, n: int, now_ms: int) -> list[tuple[str, float]]:
        """A global ZSET's top n, re-read every ``refresh_s`` (the scorer's in-memory lists)."""
        hit = self.lists.get(key)
        if hit is None or now_ms - hit[0] > self.cfg.refresh_s * 1000:
            hit = (now_ms, _top(self.builder.image.zsets.get(key), n))
            self.lists[key] = hit
        return hit[1]

    def __call__(self, user: User, k: int, sim_ms: int) -> Served:
        self.requests += 1
        rid, uid, t = f"r{self.requests}", user.user_id, sim_ms
        if t >= self.record_to:  # draining the last purchase window: nothing more is recorded
            return Served(rid, [], "explore")
        kk, img = self.keys, self.builder.image
        sess = codecs.decode(img.strings.get(kk.session(uid))) or {}
        uf = codecs.decode(img.strings.get(kk.user_features(uid))) or {}
        last = [str(i) for i in sess.get("items", [])]
        category_of = {i: item_row(codecs.decode(img.strings.get(kk.item_catalog(i))),
                                   codecs.decode(img.strings.get(kk.item_features(i)))).category
                       for i in last}
        prefs = uf.get("pref") or {}
        top_cats = sorted(prefs, key=lambda c: (-prefs[c], c))[:2]
        trending = [r for c in top_cats for r in self.global_list(kk.trending(c), 30, t)]
        sources = [
            ("covisit", combine_related([_top(img.zsets.get(kk.covisit(i)), 50) for i in last])[:100]),
            ("history", history_rows(uf.get("recent") or [], HistorySource.quota)),
            ("trending", sorted(trending, key=lambda kv: -kv[1])),
            ("popular", self.global_list(kk.popular(), 100, t)),
            ("top_sellers", self.global_list(kk.top_sellers(), 50, t)),
        ]
        cands = merge_candidates(sources, self.cfg.candidates,
                                 exclude=img.sets.get(kk.user_purchased(uid), set()))
        picked, rows = [], []
        for i in self.rng.permutation(len(cands)).tolist():  # uniform exploration
            row = codecs.decode(img.strings.get(kk.item_catalog(cands.item_ids[i])))
            if row is not None and not row.get("active", True):
                continue  # the scorer's re-rank drops retired items
            picked.append(i)
            rows.append(row)
            if len(picked) == k:
                break
        chosen = cands.take(picked)
        device, country = context(user)
        ctx = {"surface": "home", "device": device, "country": country, "user_id": uid}
        aff = category_affinity(last, category_of)
        imp = events_pb2.Impression(request_id=rid, user_id=uid, event_time_ms=t, surface="home",
                                    arm="explore", context=events_pb2.Context(
                                        surface="home", device=device, country=country))
        feats = assemble_batch(
            item_ids=chosen.item_ids, catalogs=rows,
            item_stats=[codecs.decode(img.strings.get(kk.item_features(i))) for i in chosen.item_ids],
            retrievals=chosen.retrieval(), user_features=uf, session_affinity=aff,
            last_viewed=frozenset(last), context=ctx, now_ms=t, half_life_s=self.s.popularity_half_life_s,
            session=sess, taste_sim=taste_similarity(
                chosen.item_ids, history_items(last, uf.get("recent") or ()), self.vectors))
        if self.cfg.shown_order == "ranked" and feats:
            order = self._logging_order(feats)
            chosen, feats = chosen.take(order), [feats[j] for j in order]
        for pos, item in enumerate(chosen.item_ids):
            imp.items.append(events_pb2.ServedItem(item_id=item, position=pos, sources=chosen.sources_of(pos),
                                                   propensity=len(picked) / max(len(cands), 1)))
        self._feed("impressions", imp.SerializeToString())
        if t >= self.record_from and feats:
            self._record(rid, user, t, chosen.item_ids, feats)
        return Served(rid, chosen.item_ids, "explore")

    def _logging_order(self, feats: list[dict[str, Any]]) -> list[int]:
        """``shown_order="ranked"``: the shown items by the cold-start heuristic's logit on their
        logged features + N(0, shown_noise), highest first (indices into ``feats``)."""
        p = HeuristicRanker().predict(feats)[:, 0].clip(1e-9, 1 - 1e-9)  # [k] p_click
        score = np.log(p / (1 - p)) + self.rng.normal(0.0, self.cfg.shown_noise, len(feats))  # [k]
        return np.argsort(-score, kind="stable").tolist()

    def _record(self, rid: str, user: User, t: int, picked: list[str], feats: list[dict[str, Any]]) -> None:
        r = self.rows
        bot_p = self.world.cfg.behaviour.bot_click_rate
        for pos, item_id in enumerate(picked):
            self.served[(rid, item_id)] = len(self.labels)
            self.labels.append([0.0, 0.0, 0.0])
            self.delay.append(0)
            item = self.world.index[item_id]
            r["p_click"].append(bot_p if user.bot else self.world.p_click(user, item, pos, t))
            r["position"].append(pos)
            r["item"].append(item_id)
            r["times"].append(t)
            r["request"].append(self.requests)
        sp, dn = self.hasher.encode(feats)
        r["sparse"].append(sp)
        r["dense"].append(dn)
        self.sample = (self.sample + feats)[-500:]

    def data(self) -> RankingData:
        r = self.rows
        n_s, n_d = len(SPARSE), len(DENSE)
        return RankingData(
            sparse=np.concatenate(r["sparse"]) if r["sparse"] else np.zeros((0, n_s), np.int64),
            dense=np.concatenate(r["dense"]) if r["dense"] else np.zeros((0, n_d), np.float32),
            labels=np.array(self.labels, dtype=np.float32).reshape(-1, 3),
            times=np.array(r["times"], dtype=np.int64),
            purchase_delay_ms=np.array(self.delay, dtype=np.int64),
            request=np.array(r["request"], dtype=np.int64), position=np.array(r["position"], dtype=np.int64),
            p_click_true=np.array(r["p_click"], dtype=np.float32), item_id=np.array(r["item"], dtype=np.str_))


def simulate(cfg: TrainingSetConfig = TrainingSetConfig(), settings: Settings | None = None,
             log: Callable[[str], None] | None = None, world: WorldConfig | None = None,
             keep_log: list[tuple[int, str, bytes]] | None = None) -> RankingData:
    """Run the seeded shop and return its ranking rows (deterministic for a given config).

    ``world``: the simulator's config (default ``sim.config.load_config(settings)``: the live
    simulator's world, same item ids); its oracle arm is switched off (every visit is served
    and recorded). ``keep_log``: a list that receives every (time, topic, record) fed."""
    t0 = time.perf_counter()
    settings = settings or Settings()
    wcfg = (world or load_config(settings)).with_(run={"oracle_share": 0.0})
    w = World(config=wcfg)
    b = _Builder(cfg, w, settings, keep_log)
    launch = cfg.start_ms - 365 * DAY_MS  # older than any sim time, as the live simulator does
    for it in w.items:
        b.catalog(it.item_id, item_upsert(it, launch))
    for u in w.users:
        b.profile(u.user_id, user_profile(u, launch))
    shop = Shop(w, wcfg, b, b, b.clock, cfg.sessions_per_h / 3600.0, run_id="train")
    stop = threading.Event()
    day, end = cfg.start_ms, b.record_to + int(cfg.purchase_window_s * 1000)
    while day < end:
        day = min(day + DAY_MS, end)
        if day > b.record_to >= day - DAY_MS:
            shop.run(b.record_to, stop)
            # drain: no new sessions or catalog changes, only what is already scheduled
            # (the open sessions and the delayed carts / purchases of recorded impressions)
            shop.next_arrival = float("inf")
            shop.next_dyn = dict.fromkeys(shop.next_dyn, float("inf"))
        shop.run(day, stop)
        if log:
            log(f"simulate: sim day {(day - cfg.start_ms) // DAY_MS}: {len(b.labels)} rows, "
                f"{shop.stats.sessions} sessions, {b.fed} records")
    data = b.data()
    st = shop.stats
    data.meta = {"source": "sim", "sim": dataclasses.asdict(cfg), "records_fed": b.fed,
                 "rejected": len(b.builder.image.rejected), "requests": b.requests,
                 "sessions": st.sessions, "events": st.events, "new_items": st.new_items,
                 "new_users": st.new_users, "build_s": round(time.perf_counter() - t0, 2),
                 **data.rates(), "sample_features": b.sample}
    if log:
        log(f"simulate: {len(data)} rows in {data.meta['build_s']}s, "
            f"rates {', '.join(f'{k} {v:.4f}' for k, v in data.rates().items())}")
    return data
