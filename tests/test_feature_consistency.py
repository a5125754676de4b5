"""Online == offline: the same event log through the live dataflow (real Kafka + Redis) and
through the offline builder gives the same state for every user, item and pair."""

from __future__ import annotations

import math
import random
import time
from typing import Any

from bytewax.testing import run_main

from core import kafka
from features.events import make_event
from features.offline_builder import OfflineBuilder
from proto import codecs, events_pb2
from proto.keys import Keys
from streams.features_flow import build_flow
from streams.runner import ensure_recovery, recovery_dir

NOW = int(time.time() * 1000)
TYPES = [events_pb2.VIEW] * 6 + [events_pb2.CLICK] * 2 + [events_pb2.ADD_TO_CART, events_pb2.PURCHASE]


def event_log(seed: int = 3) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    items = [f"i{j}" for j in range(40)]
    static: list[tuple[str, bytes]] = []
    for j, item in enumerate(items):
        static.append(("catalog", events_pb2.ItemUpsert(
            item_id=item, title=f"t{j}", category=f"c{j % 6}", brand=f"b{j % 4}",
            price=round(5 + 3 * j, 2), rating=4.0, active=j != 7, updated_ms=NOW - 10**7
        ).SerializeToString()))
    for u in range(0, 30, 3):
        static.append(("users", events_pb2.UserProfile(
            user_id=f"u{u}", country="DE", age_bucket="25-34", signup_ms=NOW - 10**9,
            updated_ms=NOW - 10**8).SerializeToString()))
    live: list[tuple[str, bytes]] = []
    n = 0
    for u in range(30):
        t = NOW - 3 * 3600_000 + u * 1000
        for _ in range(rng.randint(5, 40)):
            n += 1
            t += rng.choice([2_000, 30_000, 40 * 60_000])  # some gaps start new sessions
            etype = rng.choice(TYPES)
            value = make_event(event_id=f"e{n}", ts_ms=t, user_id=f"u{u}", type=etype,
                               item_id=rng.choice(items), price=rng.choice([0.0, 19.99, 5.0]),
                               quantity=1)
            live.append(("clickstream", value))
            if rng.random() < 0.05:
                live.append(("clickstream", value))  # duplicate delivery
        live.append(("clickstream", make_event(event_id=f"late{u}", ts_ms=t - 2 * 3600_000,
                                               user_id=f"u{u}", type=events_pb2.VIEW, item_id="i1")))
        imp = events_pb2.Impression(request_id=f"r{u}", user_id=f"u{u}", event_time_ms=t)
        for pos, item in enumerate(rng.sample(items, 5)):
            imp.items.append(events_pb2.ServedItem(item_id=item, position=pos))
        live.append(("impressions", imp.SerializeToString()))
    live.append(("clickstream", b"\x00not-a-protobuf"))
    return static, live


def close(a: Any, b: Any, path: str = "") -> None:
    if isinstance(a, float) or isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a} != {b}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), f"{path}: {a} != {b}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def produce(settings, records) -> None:
    p = kafka.producer(settings)
    for topic, value in records:
        p.produce(settings.topic(topic), value=value, key=b"k")  # one key: one partition, log order
    assert p.flush(10) == 0


def test_dataflow_and_offline_builder_agree(settings, redis_client, tmp_path):
    s = settings.replace(state_dir=str(tmp_path), stream_recovery=True)
    static, live = event_log()
    rec = ensure_recovery(recovery_dir(s, "consistency"))
    produce(s, static)  # catalog and profiles first, as in production
    run_main(build_flow(s, flow_id="consistency", tail=False), recovery_config=rec)
    produce(s, live)
    run_main(build_flow(s, flow_id="consistency", tail=False), recovery_config=rec)

    offline = OfflineBuilder(s).feed_all(static + live)
    assert len(offline.rejected) >= 31  # 30 late events + 1 undecodable
    changelog = Keys(s.redis_prefix).item_changelog()  # notifications for scorers, not state
    online_keys = {k.decode() for k in redis_client.scan_iter(match=f"{s.redis_prefix}:*")} - {changelog}
    offline_keys = set(offline.strings) | set(offline.zsets) | set(offline.sets)
    assert online_keys == offline_keys
    kinds = {k.rsplit(":", 1)[-1] for k in offline.strings}
    assert {"session", "feat", "stats", "cat"} <= kinds
    for key, raw in offline.strings.items():
        close(codecs.decode(redis_client.get(key)), codecs.decode(raw), key)
    for key, z in offline.zsets.items():
        online = {m.decode(): sc for m, sc in redis_client.zrange(key, 0, -1, withscores=True)}
        close(online, z, key)
    for key, members in offline.sets.items():
        assert {m.decode() for m in redis_client.smembers(key)} == members, key
