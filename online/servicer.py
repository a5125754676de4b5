"""The Recommend RPC: validate -> user state -> retrieve -> rank -> re-rank -> respond + log.

Deadline-aware: a failing or late stage (Redis down, timeout, bug) answers from the in-memory
fallback list with ``degraded=true``. The RPC never fails because a dependency did.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
import uuid
from typing import Any

import grpc

from online import metrics
from online import scorer as S
from online.errors import InvalidArgument, grpc_errors
from online.impressions import ImpressionLogger
from online.store import StateStore, UserState
from proto import codecs, events_pb2, recommend_pb2, recommend_pb2_grpc
from recsys.settings import Settings

log = logging.getLogger(__name__)
MAX_ID_LEN = 128
ARM_POLICIES = ("model", "popular", "random")


class DeadlineExceeded(Exception):
    pass


def assign_arm(user_id: str, experiment: str, arms: tuple[str, ...]) -> str:
    """Deterministic A/B bucketing: the same user always lands in the same arm."""
    h = int.from_bytes(hashlib.blake2b(f"{experiment}:{user_id}".encode(), digest_size=8).digest(), "big")
    return arms[h % len(arms)]


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


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, settings: Settings, store: StateStore,
                 impressions: ImpressionLogger | None = None) -> None:
        self.s = settings
        self.store = store
        self.impressions = impressions
        self.fallback = FallbackList()
        self.model_version = S.HEURISTIC_VERSION
        self._rng = random.Random(settings.sim_seed)
        self._rng_lock = threading.Lock()

    # --- RPC -------------------------------------------------------------------------------
    @grpc_errors
    def Recommend(self, request: recommend_pb2.RecommendRequest, context: grpc.ServicerContext
                  ) -> recommend_pb2.RecommendResponse:
        t0 = time.perf_counter()
        k, surface = validate_request(request, self.s)
        request_id = request.request_id or uuid.uuid4().hex
        arm = assign_arm(request.user_id, self.s.ab_experiment, self.s.ab_arms)
        degraded, reason = False, ""
        try:
            ranked = self._recommend(request, k, arm, t0)
        except Exception as exc:  # noqa: BLE001 - any failure degrades, never errors
            degraded, reason = True, f"{type(exc).__name__}: {exc}"[:200]
            metrics.FALLBACKS.labels(type(exc).__name__).inc()
            ranked = self._fallback(k, set(request.exclude_item_ids))
        resp = recommend_pb2.RecommendResponse(
            request_id=request_id, model_version=self.model_version if not degraded else "fallback",
            experiment=self.s.ab_experiment, arm=arm, degraded=degraded, degraded_reason=reason,
            served_at_ms=int(time.time() * 1000),
        )
        for pos, r in enumerate(ranked):
            resp.items.append(recommend_pb2.ScoredItem(
                item_id=r.item_id, score=r.score, position=pos, sources=list(r.sources),
                propensity=r.propensity,
                probs=recommend_pb2.HeadProbabilities(p_click=r.p_click, p_cart=r.p_cart,
                                                      p_purchase=r.p_purchase)))
        self._log_impression(request, resp, ranked, surface)
        metrics.LATENCY.observe(time.perf_counter() - t0)
        metrics.REQUESTS.labels(arm, "degraded" if degraded else "ok").inc()
        return resp

    # --- stages ----------------------------------------------------------------------------
    def _check(self, t0: float, stage: str, t_stage: float) -> float:
        now = time.perf_counter()
        metrics.STAGE_LATENCY.labels(stage).observe(now - t_stage)
        if (now - t0) * 1000 > self.s.request_deadline_ms:
            raise DeadlineExceeded(f"deadline {self.s.request_deadline_ms} ms passed after {stage}")
        return now

    def _recommend(self, req: recommend_pb2.RecommendRequest, k: int, arm: str, t0: float
                   ) -> list[S.Ranked]:
        t = time.perf_counter()
        state = self.store.user_state(req.user_id)
        t = self._check(t0, "user_state", t)
        cached = self._from_cache(state, k, arm)
        if cached is not None:
            return cached
        exclude = frozenset(req.exclude_item_ids) | state.purchased
        policy = arm if arm in ARM_POLICIES else "model"
        sources = self._retrieve(state, policy)
        t = self._check(t0, "retrieval", t)
        cands = S.merge_candidates(sources, self.s.candidates, exclude)
        catalog = {c.item_id: row for c in cands if (row := self.store.catalog(c.item_id))}
        for item in state.last_viewed:
            row = self.store.catalog(item)
            if row:
                catalog[item] = row
        if policy == "random":
            with self._rng_lock:
                self._rng.shuffle(cands)
        affinity = S.category_affinity(state.last_viewed, catalog)
        ranked = S.heuristic_rank(cands, affinity, catalog) if policy != "random" else [
            S.Ranked(c.item_id, 0.0, 0.0, 0.0, 0.0, tuple(c.sources), {}) for c in cands]
        t = self._check(t0, "ranking", t)
        out = S.rerank(ranked, k, catalog, max_per_category=max(2, k // 3))
        self._check(t0, "rerank", t)
        if out:
            self._store_cache(req.user_id, state, out, arm)
        if len(out) < k:
            seen = {r.item_id for r in out} | exclude
            out += [r for r in self._fallback(k, seen) if r.item_id not in seen][: k - len(out)]
        for head, attr in (("click", "p_click"), ("cart", "p_cart"), ("purchase", "p_purchase")):
            if out:
                metrics.PREDICTED.labels(head).set(sum(getattr(r, attr) for r in out) / len(out))
        return out

    def _retrieve(self, state: UserState, policy: str) -> list[tuple[str, list[tuple[str, float]]]]:
        sources: list[tuple[str, list[tuple[str, float]]]] = []
        if policy == "model" and state.last_viewed:
            related = self.store.related(state.last_viewed, per_item=50)
            sources.append(("covisit", S.combine_related(related)))
        sources.append(("popular", self.store.popular(200 if policy != "random" else 1000)))
        sources.append(("top_sellers", [(i, 1.0) for i in self.fallback.items[:100]]))
        for name, rows in sources:
            metrics.CANDIDATES.labels(name).observe(len(rows))
        return sources

    def _from_cache(self, state: UserState, k: int, arm: str) -> list[S.Ranked] | None:
        c = state.cached
        if not c or c.get("ver") != state.session_version or c.get("arm") != arm \
                or len(c.get("items", [])) < k or c.get("model") != self.model_version:
            metrics.CACHE.labels("miss").inc()
            return None
        metrics.CACHE.labels("hit").inc()
        return [S.Ranked(i, s, pc, pa, pp, tuple(src), {}) for i, s, pc, pa, pp, src in c["items"][:k]]

    def _store_cache(self, user_id: str, state: UserState, out: list[S.Ranked], arm: str) -> None:
        if self.s.cache_ttl_s <= 0 or arm == "random":
            return
        value: dict[str, Any] = {
            "ver": state.session_version, "arm": arm, "model": self.model_version,
            "items": [[r.item_id, r.score, r.p_click, r.p_cart, r.p_purchase, list(r.sources)]
                      for r in out],
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
        for pos, r in enumerate(ranked):
            imp.items.append(events_pb2.ServedItem(
                item_id=r.item_id, position=pos, score=r.score, p_click=r.p_click, p_cart=r.p_cart,
                p_purchase=r.p_purchase, sources=list(r.sources), propensity=r.propensity,
                features=codecs.pack_features(r.features)))
        self.impressions.log(imp)
