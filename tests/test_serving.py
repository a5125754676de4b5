"""Serving qualities: retrieval sources, failure isolation, exploration propensities, A/B arms,
result cache, hot model reload. Real Redis + real gRPC server; the state is written by the
dataflow's own step functions (OfflineBuilder) where the test needs realistic state."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from features.events import make_event
from features.offline_builder import OfflineBuilder
from features.writes import Write
from models.registry import ModelRegistry, default_root
from online.candidates import Ranked
from online.ranking import HeuristicRanker, ModelHolder
from online.rerank import Exploration, explore
from online.server import build_server
from online.servicer import assign_arm
from proto import events_pb2, recommend_pb2, recommend_pb2_grpc
from streams.redis_sink import apply_writes

NOW = int(time.time() * 1000)


def _load_state(settings, redis_client, records) -> None:
    """Build state with the dataflow's step functions and write it to the real Redis."""
    image = OfflineBuilder(settings).feed_all(records)
    writes = [Write("set", k, v) for k, v in image.strings.items()]
    writes += [Write("zreplace", k, v) for k, v in image.zsets.items()]
    writes += [Write("sadd", k, m) for k, ms in image.sets.items() for m in ms]
    apply_writes(redis_client, writes)


def _catalog(item: str, cat: str, price: float = 10.0, t: int = NOW - 10_000) -> tuple[str, bytes]:
    return ("catalog", events_pb2.ItemUpsert(item_id=item, category=cat, brand="b" + item,
                                             price=price, active=True, updated_ms=t).SerializeToString())


def _view(n: int, user: str, item: str, t: int) -> tuple[str, bytes]:
    return ("clickstream", make_event(event_id=f"v{n}", ts_ms=t, user_id=user, type=events_pb2.VIEW,
                                      item_id=item))


def _stub(srv) -> recommend_pb2_grpc.RecommendServiceStub:
    return recommend_pb2_grpc.RecommendServiceStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))


@pytest.fixture()
def world(settings, redis_client):
    """Shoes fans: u1 viewed shoes; trending shoes exist; a brand-new item appears last."""
    recs = [_catalog(f"s{j}", "shoes") for j in range(8)] + [_catalog(f"h{j}", "hats") for j in range(8)]
    n = 0
    for u in range(6):
        for j in range(8):
            n += 1
            recs.append(_view(n, f"o{u}", f"h{j}", NOW - 500_000 + n))  # hats are globally popular
    for j in (5, 6, 7):  # a few shoppers looked at the other shoes recently: they trend
        n += 1
        recs.append(_view(n, f"p{j}", f"s{j}", NOW - 200_000 + n))
    for j in range(5):
        n += 1
        recs.append(_view(n, "u1", f"s{j}", NOW - 100_000 + n))
    recs.append(_catalog("fresh1", "shoes", t=NOW - 1000))
    _load_state(settings, redis_client, recs)
    return settings


def test_sources_trending_new_items_and_features_logged(world):
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False, ann=None)
    try:
        srv.refresher.refresh_once()
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=10), timeout=5)
        assert not resp.degraded, resp.degraded_reason
        sources = {i.item_id: set(i.sources) for i in resp.items}
        assert any("trending" in s for s in sources.values())  # shoes trending for a shoes fan
        assert "new_items" in sources.get("fresh1", set())  # the new item is a candidate
        assert not {f"s{j}" for j in range(5)} & set(sources)  # just-viewed items not re-shown
        top = resp.items[0].item_id
        assert top.startswith("s") or top == "fresh1"  # session/user preference beats global hats
    finally:
        srv.stop(0)


def test_a_failing_source_is_skipped_not_fatal(world):
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False)
    try:
        def broken(*_a, **_k):
            raise ConnectionError("trending shard down")
        srv.servicer.store.trending = broken  # type: ignore[method-assign]
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert not resp.degraded and len(resp.items) == 5
        assert all("trending" not in i.sources for i in resp.items)
    finally:
        srv.stop(0)


def test_exploration_propensities():
    ranked = [Ranked(f"x{i}", 1.0 - i / 100, 0.1, 0.0, 0.0, ("popular",), {"log_views": 5.0})
              for i in range(20)]
    pool = [Ranked(f"n{i}", 0.0, 0.0, 0.0, 0.0, ("new_items",), {"log_views": 0.0}) for i in range(4)]
    items, rest = ranked[:10], ranked[10:] + pool
    none = explore(items, rest, Exploration(epsilon=0.0), random.Random(1))
    assert [r.item_id for r in none] == [r.item_id for r in items]
    always = explore(items, rest, Exploration(epsilon=1.0, slots=(4, 9)), random.Random(1))
    explored = [r for r in always if "explore" in r.sources]
    assert len(explored) == 2 and {always[4].item_id, always[9].item_id} <= {p.item_id for p in pool}
    assert sorted(r.propensity for r in explored) == [1.0 / 4, 1.0 / 3]  # epsilon / |pool| left
    rng, shown = random.Random(7), 0
    for _ in range(2000):
        out = explore(items, rest, Exploration(epsilon=0.2, slots=(4,)), rng)
        shown += "explore" in out[4].sources
        if "explore" not in out[4].sources:
            assert out[4].propensity == pytest.approx(0.8)
    assert 0.17 < shown / 2000 < 0.23  # the logged propensity matches the real frequency


def test_ab_arms_are_deterministic_and_change_the_policy(world):
    s = world.replace(ab_arms=("model", "popular"), explore_epsilon=0.0)
    arms = {u: assign_arm(u, s.ab_experiment, s.ab_arms) for u in (f"u{i}" for i in range(200))}
    assert arms == {u: assign_arm(u, s.ab_experiment, s.ab_arms) for u in arms}
    assert 70 < sum(a == "popular" for a in arms.values()) < 130
    srv = build_server(s, port=0, log_impressions=False)
    try:
        pop_user = next(u for u, a in arms.items() if a == "popular")
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id=pop_user, k=5), timeout=5)
        assert resp.arm == "popular"
        assert all(set(i.sources) <= {"popular", "top_sellers"} for i in resp.items)
    finally:
        srv.stop(0)


def test_cache_hit_until_the_session_changes(world, redis_client):
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False)
    try:
        stub = _stub(srv)
        first = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        calls = []
        real_items = srv.servicer.store.item_columns
        srv.servicer.store.item_columns = (  # type: ignore[method-assign]
            lambda ids: calls.append(ids) or real_items(ids))
        again = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert [i.item_id for i in again.items] == [i.item_id for i in first.items] and not calls
        _load_state(world, redis_client, [_view(999, "u1", "h1", NOW)])  # session moves on
        stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert calls, "a changed session must bypass the cache"
    finally:
        srv.stop(0)



def test_the_cache_answers_only_the_request_it_was_built_for(world):
    """A cached ``home`` list must not answer a ``pdp`` request, another context, or a request
    that excludes one of its items; the same request again is a hit."""
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False)
    try:
        stub = _stub(srv)
        home = recommend_pb2.RecommendRequest(user_id="u1", k=5, surface="home")
        first = stub.Recommend(home, timeout=5)
        calls: list[list[str]] = []
        real_items = srv.servicer.store.item_columns
        srv.servicer.store.item_columns = (  # type: ignore[method-assign]
            lambda ids: calls.append(ids) or real_items(ids))

        def recomputed(req: recommend_pb2.RecommendRequest) -> tuple[bool, list[str]]:
            calls.clear()
            resp = stub.Recommend(req, timeout=5)
            return bool(calls), [i.item_id for i in resp.items]

        assert recomputed(home) == (False, [i.item_id for i in first.items])  # same request: a hit
        assert recomputed(recommend_pb2.RecommendRequest(user_id="u1", k=5, surface="pdp"))[0]
        ios = recommend_pb2.RecommendRequest(user_id="u1", k=5, surface="home",
                                             context=events_pb2.Context(device="ios"))
        assert recomputed(ios)[0]
        banned = first.items[0].item_id
        again, items = recomputed(recommend_pb2.RecommendRequest(user_id="u1", k=5, surface="home",
                                                                 exclude_item_ids=[banned]))
        assert again and banned not in items
    finally:
        srv.stop(0)



def test_a_late_stage_answers_degraded_within_the_production_deadline(world):
    """The production deadline (the default setting) with a stage made late on purpose: the
    fallback answers within the call, ``degraded=true`` with the late stage named."""
    from core.settings import Settings

    production_ms = Settings().request_deadline_ms
    srv = build_server(world.replace(explore_epsilon=0.0, request_deadline_ms=production_ms,
                                     cache_ttl_s=0), port=0, log_impressions=False)
    try:
        srv.refresher.refresh_once()
        real_items = srv.servicer.store.item_columns
        late = threading.Event()  # late only for the call below

        def slow_items(ids):
            if late.is_set():
                time.sleep(production_ms / 1000 * 1.5)
            return real_items(ids)

        srv.servicer.store.item_columns = slow_items  # type: ignore[method-assign]
        stub = _stub(srv)
        late.set()
        resp = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=10)
        assert resp.degraded and "features" in resp.degraded_reason, resp.degraded_reason
        assert len(resp.items) == 5  # the fallback list filled it
    finally:
        srv.stop(0)



def test_an_explained_call_returns_every_candidate_with_its_model_rank(world):
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False, ann=None)
    try:
        stub = _stub(srv)
        plain = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert not plain.candidates  # only when asked
        calls: list[list[str]] = []
        real_items = srv.servicer.store.item_columns
        srv.servicer.store.item_columns = (  # type: ignore[method-assign]
            lambda ids: calls.append(ids) or real_items(ids))
        resp = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5, explain=True), timeout=5)
        assert calls, "an explained call is computed, never answered from the cache"
        assert not resp.degraded, resp.degraded_reason
        cands = {c.item_id: c for c in resp.candidates}
        assert len(cands) == len(resp.candidates) > len(resp.items)
        assert sorted(c.model_rank for c in resp.candidates) == list(range(len(resp.candidates)))
        assert all(c.sources for c in resp.candidates)
        served = [i.item_id for i in resp.items]
        assert set(served) <= set(cands)
        # without exploration the first served item is the ranker's best that passed the caps
        ranks = [cands[i].model_rank for i in served]
        assert ranks[0] == min(ranks)
        assert set(cands[served[0]].sources) == set(resp.items[0].sources)
    finally:
        srv.stop(0)


class ConstRanker:
    def __init__(self, p: float) -> None:
        self.version, self.p = "const", p

    def predict(self, features):
        return np.tile([self.p, self.p / 2, self.p / 4], (len(features), 1))


def test_hot_reload_swaps_the_promoted_model_without_failing_requests(world, tmp_path: Path):
    root = default_root(tmp_path)
    reg = ModelRegistry(root)
    f = tmp_path / "m.txt"
    f.write_text("0.3")
    def load(p: Path) -> ConstRanker:
        return ConstRanker(float((Path(p) / "model.txt").read_text()))

    holder = ModelHolder(root, "ranker", load, 0.05)
    srv = build_server(world.replace(explore_epsilon=0.0), port=0, log_impressions=False)
    srv.servicer.models = holder.start()
    stop, errors, versions = threading.Event(), [], set()

    def hammer() -> None:
        stub = _stub(srv)
        while not stop.is_set():
            try:
                r = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
                versions.add(r.model_version)
            except grpc.RpcError as exc:
                errors.append(exc)
    t = threading.Thread(target=hammer)
    t.start()
    try:
        time.sleep(0.3)
        assert isinstance(holder.current, HeuristicRanker)
        reg.promote("ranker", reg.register("ranker", f, {"auc": 0.7}, model_filename="model.txt"))
        deadline = time.monotonic() + 10
        while holder.loaded_version != "v1" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        stop.set()
        t.join()
        holder.stop()
        srv.stop(0)
    assert holder.loaded_version == "v1" and not errors
    assert {"heuristic-v1", "ranker-v1"} <= versions


def test_event_time_metadata_stamps_the_response_and_bad_values_are_rejected(world):
    srv = build_server(world, port=0, log_impressions=False)
    try:
        stub = _stub(srv)
        t = NOW - 3 * 3600_000  # a simulator whose clock runs 3 h behind wall time
        resp = stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=3), timeout=5,
                              metadata=(("x-recsys-event-time-ms", str(t)),))
        assert resp.served_at_ms == t and not resp.degraded
        for bad in ("soon", str(NOW + 10 * 86400_000)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=3), timeout=5,
                               metadata=(("x-recsys-event-time-ms", bad),))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        srv.stop(0)


def test_a_server_that_cannot_bind_stops_what_it_started(settings):
    """No follower, reload or impression thread may outlive a failed start (the port or host
    is unusable): a supervisor that retries must not pile them up."""
    def ours() -> set[str]:
        names = {"refresher", "model-reload", "ann-follower", "impressions", "item-changes",
                 "tower-reload"}
        return {t.name for t in threading.enumerate() if t.name in names}
    before = ours()
    with pytest.raises(RuntimeError, match="cannot bind"):
        build_server(settings.replace(grpc_host="203.0.113.1"), port=0)  # not an address of ours
    deadline = time.monotonic() + 5
    while ours() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours() - before
