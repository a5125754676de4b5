"""The feature dataflow against the real embedded broker and a real redis-server."""

from __future__ import annotations

import time

import msgpack
from bytewax.testing import run_main
from confluent_kafka import Consumer

from core import kafka
from features import decay as FD
from features.events import make_event
from proto import codecs, events_pb2
from proto.keys import Keys
from streams import flow_metrics as metrics
from streams.features_flow import build_flow

NOW = int(time.time() * 1000)


def _produce(settings, values: list[tuple[str, bytes]], topic: str = "clickstream") -> None:
    p = kafka.producer(settings)
    for key, value in values:
        p.produce(settings.topic(topic), key=key.encode(), value=value)
    assert p.flush(10) == 0


def _view(eid: str, user: str, item: str, t: int) -> tuple[str, bytes]:
    return user, make_event(event_id=eid, ts_ms=t, user_id=user, type=events_pb2.VIEW, item_id=item)


def _consume_all(settings, topic: str, expect: int, timeout: float = 20.0) -> list[bytes]:
    c = Consumer({**settings.kafka_config(), "group.id": f"t-{topic}", "auto.offset.reset": "earliest"})
    c.subscribe([settings.topic(topic)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and not m.error():
            out.append(m.value())
    c.close()
    return out


def test_sessions_item_counts_covisit_and_dead_letters(settings, redis_client):
    keys = Keys(settings.redis_prefix)
    events = [
        _view("e1", "u1", "a", NOW - 5000),
        _view("e2", "u1", "b", NOW - 4000),
        _view("e3", "u1", "c", NOW - 3000),
        _view("e3", "u1", "c", NOW - 3000),  # duplicate event id: counted once
        _view("e4", "u2", "a", NOW - 2000),
        _view("e5", "u2", "b", NOW - 1000),
        ("u3", b"\xff\x00garbage"),  # undecodable
        ("u4", make_event(event_id="e6", ts_ms=NOW, user_id="u4", type=events_pb2.VIEW,
                          item_id="a", price=-3.0)),  # negative price
        ("u5", make_event(event_id="e7", ts_ms=NOW, user_id="u5", type=events_pb2.VIEW)),  # no item
    ]
    _produce(settings, events)
    keys_before = {n: metrics.STATE_KEYS.labels(n)._value.get() for n in ("sessionize", "item_step")}
    run_main(build_flow(settings, flow_id="t", tail=False))
    new_keys = {n: metrics.STATE_KEYS.labels(n)._value.get() - v for n, v in keys_before.items()}
    assert new_keys == {"sessionize": 2, "item_step": 3}  # users u1, u2; items a, b, c

    s1 = codecs.decode(redis_client.get(keys.session("u1")))
    assert s1 is not None and s1["items"] == ["c", "b", "a"]
    assert s1["counts"] == {"view": 3}  # the duplicate was ignored
    a = codecs.decode(redis_client.get(keys.item_features("a")))
    assert a is not None and a["n"] == 2
    assert FD.decayed_value(a["views"], NOW, settings.popularity_half_life_s) > 1.99
    pop = redis_client.zrevrange(keys.popular(), 0, -1)
    assert set(pop) == {b"a", b"b", b"c"}
    # b was co-viewed next to a (twice) and c (once): a ranks above c
    related = [m.decode() for m in redis_client.zrevrange(keys.covisit("b"), 0, -1)]
    assert related == ["a", "c"]
    # the item changelog names every item whose row changed (scorers re-read those)
    announced = [i.decode() for _, f in redis_client.xrange(keys.item_changelog())
                 for i in msgpack.unpackb(f[b"ids"], raw=True)]
    assert set(announced) == {"a", "b", "c"}

    dead = _consume_all(settings, "dead_letter", expect=3)
    reasons = sorted(events_pb2.DeadLetter.FromString(d).reason.split(" ")[0] for d in dead)
    assert reasons == ["invalid", "missing", "undecodable"]
    originals = {events_pb2.DeadLetter.FromString(d).original for d in dead}
    assert b"\xff\x00garbage" in originals
    assert msgpack is not None


def test_catalog_upserts_land_in_redis(settings, redis_client):
    item = events_pb2.ItemUpsert(item_id="sku1", title="Red shoe", category="shoes", brand="acme",
                                 price=49.5, rating=4.2, active=True, updated_ms=NOW)
    _produce(settings, [("sku1", item.SerializeToString())], topic="catalog")
    run_main(build_flow(settings, flow_id="t", tail=False))
    cat = codecs.decode(redis_client.get(Keys(settings.redis_prefix).item_catalog("sku1")))
    assert cat is not None and cat["category"] == "shoes" and cat["price"] == 49.5
