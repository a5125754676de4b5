"""The gRPC scorer end to end: events -> Kafka -> Bytewax -> Redis -> Recommend -> impressions."""

from __future__ import annotations

import time

import grpc
import pytest
from bytewax.testing import run_main
from confluent_kafka import Consumer
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from core import kafka
from features.events import make_event
from online.server import build_server
from online.store import RedisStore
from proto import events_pb2, recommend_pb2, recommend_pb2_grpc
from proto.keys import Keys
from recsys.embedded.redis_server import free_port
from streams.features_flow import build_flow

NOW = int(time.time() * 1000)


def _views(settings, sessions: dict[str, list[str]]) -> None:
    p = kafka.producer(settings)
    n = 0
    for user, items in sessions.items():
        for item in items:
            n += 1
            p.produce(settings.topic("clickstream"), key=user.encode(), value=make_event(
                event_id=f"{user}-{n}", ts_ms=NOW - 100_000 + n, user_id=user,
                type=events_pb2.VIEW, item_id=item))
    assert p.flush(10) == 0


@pytest.fixture()
def scorer(settings):
    srv = build_server(settings, port=0)
    yield srv
    srv.stop(0)


def _stub(port: int) -> recommend_pb2_grpc.RecommendServiceStub:
    return recommend_pb2_grpc.RecommendServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def test_recommendation_reflects_stream_state_and_logs_impression(settings, scorer):
    # Many shoppers view x then y (y co-viewed with x); popular noise items elsewhere.
    sessions = {f"s{i}": ["x", "y"] for i in range(5)}
    sessions.update({f"n{i}": ["p1", "p2", "p3"] for i in range(8)})
    sessions["alice"] = ["x"]
    _views(settings, sessions)
    run_main(build_flow(settings, flow_id="t", tail=False))
    scorer.servicer.fallback.refresh(scorer.servicer.store)

    resp = _stub(scorer.port).Recommend(recommend_pb2.RecommendRequest(user_id="alice", k=5),
                                        timeout=5)
    assert not resp.degraded, resp.degraded_reason
    assert resp.items[0].item_id == "y"  # co-viewed with what alice just saw
    assert "covisit" in resp.items[0].sources
    assert {i.item_id for i in resp.items} >= {"p1", "p2", "p3"}  # backfilled by popularity
    assert resp.request_id and resp.model_version and resp.arm

    c = Consumer({**settings.kafka_config(), "group.id": "imp", "auto.offset.reset": "earliest"})
    c.subscribe([settings.topic("impressions")])
    deadline, imp = time.monotonic() + 15, None
    while imp is None and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            imp = events_pb2.Impression.FromString(m.value())
    c.close()
    assert imp is not None and imp.request_id == resp.request_id
    assert [i.item_id for i in imp.items] == [i.item_id for i in resp.items]
    assert imp.items[0].features  # features as used, for training


@pytest.mark.parametrize("req, fragment", [
    (recommend_pb2.RecommendRequest(user_id="", k=5), "user_id is required"),
    (recommend_pb2.RecommendRequest(user_id="u", k=201), "k must be between"),
    (recommend_pb2.RecommendRequest(user_id="u", k=-1), "k must be between"),
    (recommend_pb2.RecommendRequest(user_id="u" * 200), "longer than"),
    (recommend_pb2.RecommendRequest(user_id="u", surface="moon"), "unknown surface"),
])
def test_bad_arguments_are_invalid_argument(scorer, req, fragment):
    with pytest.raises(grpc.RpcError) as info:
        _stub(scorer.port).Recommend(req, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()


def test_redis_outage_degrades_to_fallback_not_error(settings):
    dead = RedisStore(f"redis://127.0.0.1:{free_port()}/0", Keys(settings.redis_prefix), 20)
    srv = build_server(settings, port=0, store=dead, log_impressions=False)
    try:
        srv.servicer.fallback.items = ["f1", "f2", "f3"]  # last known list before the outage
        resp = _stub(srv.port).Recommend(recommend_pb2.RecommendRequest(user_id="bob", k=2), timeout=5)
        assert resp.degraded and "Connection" in resp.degraded_reason
        assert [i.item_id for i in resp.items] == ["f1", "f2"]
    finally:
        srv.stop(0)


def test_reflection_lists_recommend_service(scorer):
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(f"127.0.0.1:{scorer.port}"))
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name for r in responses for s in r.list_services_response.service}
    assert "recsys.v1.RecommendService" in names
    assert "grpc.health.v1.Health" in names
