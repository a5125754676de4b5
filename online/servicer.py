"""The Recommend RPC: validate -> user state -> retrieve -> features -> rank -> value ->
re-rank (diversity, exploration) -> respond + log what was served.

Deadline-aware: a failing or late stage (Redis down, timeout, bug) answers from the in-memory
fallback list with ``degraded=true``. The RPC never fails because a dependency did.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from core.settings import Settings
from features.ranking_features import COL, FeatureBatch, ItemColumns, assemble_columns
from features.taste import history_items, taste_similarity
from online import candidates as S
from online import retrieval as R
from online import scorer_metrics as metrics
from online.errors import InvalidArgument
from online.impressions import ImpressionLogger
from online.ranking import HeuristicRanker, ModelHolder, Ranker, value_scores
from online.rerank import Exploration, diversify, explore
from online.store import StateStore, UserState
from proto import codecs, events_pb2, recommend_pb2

log = logging.getLogger(__name__)
MAX_ID_LEN = 128



def request_fingerprint(req: recommend_pb2.RecommendRequest, surface: str) -> str:
    """What a cached list was built for beyond the user's session: the surface, the request context
    (device, country, ...) and the excluded items. A list is reused only for the same
    fingerprint, so a ``home`` list never answers a ``pdp`` request, excluded items are never
    re-shown, and the logged features are those of the request served."""
    h = hashlib.blake2b(surface.encode(), digest_size=12)
    h.update(b"\x1e" + req.context.SerializeToString(deterministic=True))
    for item in sorted(set(req.exclude_item_ids)):
        h.update(b"\x1f" + item.encode())
    return h.hexdigest()

# an explained candidate: (item_id, retrieval sources, rank in the ranker's order)
Explained = tuple[str, list[str], int]


class DeadlineExceeded(Exception):
    pass


# A/B arms whose lists no ranker orders (``_recommend``: popular by popularity, random shuffled);
# the retrain's promotion gate tells their slates apart from ranked ones (recsys.cli.retrain)
UNRANKED_ARMS = ("popular", "random")


def assign_arm(user_id: str, experiment: str, arms: tuple[str, ...],
               weights: tuple[float, ...] = ()) -> str:
    """Deterministic A/B bucketing: the same user always lands in the same arm. The 64-bit hash
    of ``experiment:user_id``, read as a point in [0, 1), falls into the arm whose slice of the
    cumulative ``weights`` (relative shares in ``arms`` order; empty: equal) holds it. Changing
    the weights moves only the users between an old and a new slice boundary (ramping a last-arm
    challenger from 5% to 10% moves users into it, none out)."""
    if len(arms) == 1:
        return arms[0]
    if weights and len(weights) != len(arms):
        raise ValueError(f"{len(weights)} weights for {len(arms)} arms")
    h = int.from_bytes(hashlib.blake2b(f"{experiment}:{user_id}".encode(), digest_size=8).digest(), "big")
    shares = weights or (1.0,) * len(arms)
    point, edge = h / 2.0**64 * sum(shares), 0.0
    for arm, w in zip(arms, shares, strict=True):
        edge += w
        if point < edge:
            return arm
    return arms[-1]  # point == the total, by rounding


def validate_request(req: recommend_pb2.RecommendRequest, s: Settings) -> tuple[int, str]:
    """(k, surface) or InvalidArgument with a clear message."""
    if not req.user_id:
        raise InvalidArgument("user_id is required")
    if len(req.user_id) > MAX_ID_LEN:
        raise InvalidArgument(f"user_id longer than {MAX_ID_LEN} characters")
    if req.k < 0 or req.k > s.k_max:
        raise InvalidArgument(f"k must be between 1 and {s.k_max} (0 means {s.k_default}), got {req.k}")
    surface = req.surface or "home"
    if surface not in s.surfaces:
        raise InvalidArgument(f"unknown surface {surface!r}; known: {', '.join(s.surfaces)}")
    if len(req.exclude_item_ids) > 1000 or any(len(i) > MAX_ID_LEN for i in req.exclude_item_ids):
        raise InvalidArgument("exclude_item_ids: at most 1000 ids of at most 128 characters")
    return (req.k or s.k_default), surface


EVENT_TIME_HEADER = "x-recsys-event-time-ms"


def event_time_ms(context: Any, s: Settings) -> int:
    """The request's event time: wall time, unless the caller sends ``x-recsys-event-time-ms``
    metadata (a simulator running a faster clock, a replay) within the allowed skew. The
    impression is stamped with it, so the label join attributes that caller's clicks."""
    now = int(time.time() * 1000)
    try:
        meta = dict(context.invocation_metadata() or ())
    except (AttributeError, TypeError):
        return now
    raw = meta.get(EVENT_TIME_HEADER)
    if raw is None:
        return now
    try:
        t = int(raw)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{EVENT_TIME_HEADER} must be an integer (ms), got {raw!r}") from None
    if t > now + s.max_event_skew_s * 1000:
        raise InvalidArgument(f"{EVENT_TIME_HEADER} {t} is too far in the future")
    return t


class FallbackList:
    """Top sellers (else popular items) held in memory, refreshed in the background."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def refresh(self, store: StateStore, n: int = 500) -> None:
        rows = store.top_sellers(n)
        if len(rows) < n:
            seen = {i for i, _ in rows}
            rows += [r for r in store.popular(n) if r[0] not in seen][: n - len(rows)]
        self.items = [i for i, _ in rows]
        metrics.FALLBACK_SIZE.set(len(self.items))


class RecommendServicer:
    """The Recommend logic (synchronous; ``online.server`` puts it behind the RPC, where domain
    errors such as ``InvalidArgument`` become a gRPC status)."""

    def __init__(self, settings: Settings, store: StateStore,
                 impressions: ImpressionLogger | None = None, models: ModelHolder | None = None,
                 ann_index: Any = None, tower: Callable[[], Any] | None = None) -> None:
        self.s = settings
        self.store = store
        self.impressions = impressions
        self.fallback = FallbackList()
        self.models = models
        self.heuristic = HeuristicRanker()
        self.exploration = Exploration(settings.explore_epsilon,
                                       tuple(int(x) for x in settings.explore_slots))
        self._rng = random.Random(settings.sim_seed)
        self._rng_lock = threading.Lock()
        self.served_by = f"{socket.gethostname()}:{os.getpid()}"  # this process, in responses
        ann = ann_index if callable(ann_index) else (lambda: ann_index)
        self._ann: Callable[[], Any] = ann  # the item2vec replica: retrieval and the taste feature
        self.sources: list[R.Source] = [
            R.CovisitSource(store), R.SessionAnnSource(ann, tower=tower or (lambda: None)),
            R.HistorySource(), R.TrendingSource(store),
            R.NewItemsSource(store), R.PopularSource(store),
            R.TopSellersSource(lambda: self.fallback.items),
        ]

    @property
    def model_version(self) -> str:
        return self.models.current.version if self.models else self.heuristic.version

    def ranker_for(self, arm: str) -> Ranker:
        if arm == "model" and self.models is not None:
            return self.models.current
        return self.heuristic

    # --- RPC -------------------------------------------------------------------------------
    def Recommend(self, request: recommend_pb2.RecommendRequest, context: Any
                  ) -> recommend_pb2.RecommendResponse:
        t0 = time.perf_counter()
        k, surface = validate_request(request, self.s)
        now_ms = event_time_ms(context, self.s)
        request_id = request.request_id or uuid.uuid4().hex
        arm = assign_arm(request.user_id, self.s.ab_experiment, self.s.ab_arms, self.s.ab_weights)
        degraded, reason, version = False, "", "fallback"
        explained: list[Explained] | None = [] if request.explain else None
        try:
            ranked, version = self._recommend(request, k, arm, surface, t0, now_ms, explained)
        except Exception as exc:  # noqa: BLE001 - any failure degrades, never errors
            degraded, reason = True, f"{type(exc).__name__}: {exc}"[:200]
            metrics.child(metrics.FALLBACKS, type(exc).__name__).inc()
            ranked = self._fallback(k, set(request.exclude_item_ids))
        resp = recommend_pb2.RecommendResponse(
            request_id=request_id, model_version=version, experiment=self.s.ab_experiment, arm=arm,
            degraded=degraded, degraded_reason=reason, served_at_ms=now_ms, served_by=self.served_by)
        add = resp.items.add  # built in place: append() would copy each message
        for pos, r in enumerate(ranked):
            item = add(item_id=r.item_id, score=r.score, position=pos, sources=r.sources,
                       propensity=r.propensity)
            probs = item.probs
            probs.p_click, probs.p_cart, probs.p_purchase = r.p_click, r.p_cart, r.p_purchase
        if explained:
            add_candidate = resp.candidates.add
            for item_id, sources, rank in explained:
                add_candidate(item_id=item_id, sources=sources, model_rank=rank)
        self._log_impression(request, resp, ranked, surface)
        metrics.LATENCY.observe(time.perf_counter() - t0)
        metrics.child(metrics.REQUESTS, arm, "degraded" if degraded else "ok").inc()
        return resp

    # --- stages ----------------------------------------------------------------------------
    def _check(self, t0: float, stage: str, t_stage: float) -> float:
        now = time.perf_counter()
        metrics.child(metrics.STAGE_LATENCY, stage).observe(now - t_stage)
        if (now - t0) * 1000 > self.s.request_deadline_ms:
            raise DeadlineExceeded(f"deadline {self.s.request_deadline_ms} ms passed after {stage}")
        return now

    def _recommend(self, req: recommend_pb2.RecommendRequest, k: int, arm: str, surface: str,
                   t0: float, now_ms: int, explained: list[Explained] | None = None
                   ) -> tuple[list[S.Ranked], str]:
        """The served list and the model version; ``explained``, when given, receives every
        retrieved candidate with its sources and its rank in the ranker's order."""
        t = time.perf_counter()
        state = self.store.user_state(req.user_id)
        t = self._check(t0, "user_state", t)
        ranker = self.ranker_for(arm)
        # the fingerprint only where a cached list is there to check or one will be stored
        asked = request_fingerprint(req, surface) if state.cached or self._caches(arm) else ""
        cached = None if explained is not None else self._from_cache(state, k, arm, ranker.version, asked)
        if cached is not None:
            return cached, ranker.version
        exclude = frozenset(req.exclude_item_ids) | state.purchased
        prefs = (state.features or {}).get("pref") or {}
        q = R.Query(req.user_id, state, sorted(prefs, key=lambda c: -prefs[c]), exclude)
        sources = R.retrieve(self._sources_for(arm), q, self.store.prefetch)
        cands = S.merge_candidates(sources, self.s.candidates, exclude | set(state.last_viewed))
        t = self._check(t0, "retrieval", t)
        if arm == "random":
            with self._rng_lock:
                perm = list(range(len(cands)))
                self._rng.shuffle(perm)
            cands = cands.take(perm)
        batch, items = self._features(cands, state, req, surface, now_ms)
        t = self._check(t0, "features", t)
        probs = ranker.predict(batch) if cands else None
        t = self._check(t0, "ranking", t)
        out = self._rerank(cands, batch, items, probs, arm, k, explained)
        self._check(t0, "rerank", t)
        if out:
            self._store_cache(req.user_id, state, out, arm, ranker.version, asked)
        if len(out) < k:
            seen = {r.item_id for r in out} | exclude
            out += [r for r in self._fallback(k, seen) if r.item_id not in seen][: k - len(out)]
        return out, ranker.version

    def _sources_for(self, arm: str) -> list[R.Source]:
        if arm == "popular":
            return [s for s in self.sources if s.name in ("popular", "top_sellers")]
        if arm == "random":
            return [s for s in self.sources if s.name in ("popular", "new_items")]
        return self.sources

    def _features(self, cands: S.Candidates, state: UserState,
                  req: recommend_pb2.RecommendRequest, surface: str, now_ms: int
                  ) -> tuple[FeatureBatch, ItemColumns]:
        ids = cands.item_ids
        last = state.last_viewed
        # item rows (process memory, refreshed from Redis) for them and the session's items
        cols = self.store.item_columns([*ids, *last])
        items = cols.head(len(ids))
        affinity = S.category_affinity(last, dict(zip(last, cols.category[len(ids):], strict=True)))
        ctx = {"surface": surface, "device": req.context.device, "country": req.context.country,
               "user_id": req.user_id}
        history = history_items(last, (state.features or {}).get("recent") or ())
        batch = assemble_columns(
            item_ids=ids, items=items, retrieval=cands.retrieval(),
            user_features=state.features, session_affinity=affinity,
            last_viewed=frozenset(last), context=ctx, now_ms=now_ms,
            half_life_s=self.s.popularity_half_life_s, session=state.session,
            taste_sim=taste_similarity(ids, history, self._ann()) if self.s.taste_feature else None)
        return batch, items

    def _rerank(self, cands: S.Candidates, batch: FeatureBatch, items: ItemColumns,
                probs: Any, arm: str, k: int, explained: list[Explained] | None = None
                ) -> list[S.Ranked]:
        """Value, order (by arm), diversity caps, exploration. ``Ranked`` (with its feature dict)
        is built only for the items that may be served."""
        if probs is None:
            return []
        for head, mean in zip(("click", "cart", "purchase"), probs.mean(axis=0).tolist(), strict=True):
            metrics.child(metrics.PREDICTED, head).set(mean)
        values = value_scores(probs, items.price, self.s.value_revenue_weight,
                              self.s.value_click_weight)
        if arm == "popular":
            order = np.argsort(-batch.dense[:, COL["popular"]], kind="stable")
        elif arm == "random":
            order = np.arange(len(cands))
        else:  # best value first; ties keep retrieval priority
            order = np.argsort(-values, kind="stable")
        order_l: list[int] = order.tolist()
        if explained is not None:
            rank = {j: r for r, j in enumerate(order_l)}  # the order covers every candidate
            explained.extend((cands.item_ids[j], list(cands.sources_of(j)), rank[j])
                             for j in range(len(cands)))

        def ranked(j: int) -> S.Ranked:
            p = probs[j]
            return S.Ranked(cands.item_ids[j], float(values[j]), float(p[0]), float(p[1]), float(p[2]),
                            cands.sources_of(j), batch.row(j))

        picked = diversify(order_l, k, items, self.s.max_per_category, self.s.max_per_brand)
        out = [ranked(j) for j in picked]
        if arm in ("model", "heuristic"):
            chosen = set(picked)
            policy = self.exploration

            def pool() -> list[int]:
                ok = (items.active & policy.pool_mask(cands, batch.dense[:, COL["log_views"]])).tolist()
                return [j for j in order_l if ok[j] and j not in chosen]
            with self._rng_lock:
                out = explore(out, pool, policy, self._rng, make=ranked)
        return out

    def _caches(self, arm: str) -> bool:
        """Whether this arm's lists are stored in the result cache (random lists never are)."""
        return self.s.cache_ttl_s > 0 and arm != "random"

    def _from_cache(self, state: UserState, k: int, arm: str, version: str, asked: str
                    ) -> list[S.Ranked] | None:
        """The cached list, if it was built for this session version, arm, model and the same
        request (surface, context, exclusions: ``request_fingerprint``)."""
        c = state.cached
        if not c or c.get("ver") != state.session_version or c.get("arm") != arm \
                or len(c.get("items", [])) < k or c.get("model") != version or c.get("req") != asked:
            metrics.child(metrics.CACHE, "miss").inc()
            return None
        metrics.child(metrics.CACHE, "hit").inc()
        return [S.Ranked(i, s, pc, pa, pp, tuple(src), f, prop)
                for i, s, pc, pa, pp, src, f, prop in c["items"][:k]]

    def _store_cache(self, user_id: str, state: UserState, out: list[S.Ranked], arm: str,
                     version: str, asked: str) -> None:
        if not self._caches(arm):
            return
        value: dict[str, Any] = {
            "ver": state.session_version, "arm": arm, "model": version, "req": asked,
            "items": [[r.item_id, r.score, r.p_click, r.p_cart, r.p_purchase, list(r.sources),
                       r.features, r.propensity] for r in out],
        }
        self.store.cache_result(user_id, value, self.s.cache_ttl_s)

    def _fallback(self, k: int, exclude: set[str]) -> list[S.Ranked]:
        items = [i for i in self.fallback.items if i not in exclude][:k]
        return [S.Ranked(i, 0.0, 0.0, 0.0, 0.0, ("fallback",), {}) for i in items]

    def _log_impression(self, req: recommend_pb2.RecommendRequest,
                        resp: recommend_pb2.RecommendResponse, ranked: list[S.Ranked],
                        surface: str) -> None:
        if self.impressions is None:
            return
        imp = events_pb2.Impression(
            request_id=resp.request_id, user_id=req.user_id, event_time_ms=resp.served_at_ms,
            surface=surface, experiment=resp.experiment, arm=resp.arm,
            model_version=resp.model_version, degraded=resp.degraded,
            degraded_reason=resp.degraded_reason, context=req.context,
        )
        add = imp.items.add
        for pos, r in enumerate(ranked):
            add(item_id=r.item_id, position=pos, score=r.score, p_click=r.p_click, p_cart=r.p_cart,
                p_purchase=r.p_purchase, sources=r.sources, propensity=r.propensity,
                features=codecs.pack_features(r.features))
        self.impressions.log(imp)
