"""Stream benchmark: full feature dataflow vs a raw confluent-kafka consume loop, same events.

1. produce ``--events`` clickstream events (plus a catalog) into fresh topics;
2. baseline: a raw consume loop over those events (no decoding, no state);
3. the full feature dataflow (decode, sessions, item/user features, co-visitation, Redis
   writes) from the first offset to the end, one process (``--workers`` threads);
4. freshness: the dataflow tails while events are produced at a steady ``--rate`` (2,000/s),
   and the event (Kafka timestamp) -> Redis write histogram gives p50/p99.
Starts an embedded broker and redis unless RECSYS_KAFKA_BOOTSTRAP / RECSYS_REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bytewax.testing import run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from core import kafka
from core.reports import write_json
from core.settings import Settings
from features.events import make_event
from proto import events_pb2
from recsys import supervisor as sv
from recsys.embedded.redis_server import free_port
from recsys.embedded.stack import embedded_stack
from streams.features_flow import build_flow
from streams.runner import tune_gc


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=200_000, help="events for the throughput runs")
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=5_000)
    p.add_argument("--rate", type=float, default=2000.0, help="steady rate for freshness, events/s")
    p.add_argument("--freshness-s", type=float, default=20.0, help="seconds of steady load")
    p.add_argument("--workers", type=int, default=1, help="dataflow worker threads")
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--seed", type=int, default=1)


def _events(n: int, users: int, items: int, seed: int, t0: int) -> list[tuple[bytes, bytes]]:
    rng = random.Random(seed)
    kinds = [events_pb2.VIEW] * 16 + [events_pb2.CLICK] * 3 + [events_pb2.ADD_TO_CART,
                                                                events_pb2.PURCHASE]
    out = []
    for i in range(n):
        user = f"u{int(rng.paretovariate(1.1) * 7) % users}"
        item = f"i{int(rng.paretovariate(1.05) * 3) % items}"
        out.append((user.encode(), make_event(event_id=f"b{i}", ts_ms=t0 + i, user_id=user,
                                              type=rng.choice(kinds), item_id=item, price=9.5,
                                              quantity=1)))
    return out


def _produce(s: Settings, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    p = kafka.producer(s, **{"linger.ms": 20, "batch.num.messages": 10000})
    for key, value in records:
        while True:
            try:
                p.produce(s.topic(topic), key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def raw_consume(s: Settings, n: int) -> float:
    """Events/s of a bare confluent-kafka loop reading the same topic (the baseline)."""
    topic = s.topic("clickstream")
    c = Consumer({**s.kafka_config(), "group.id": "bench-raw", "enable.auto.commit": False,
                  "fetch.wait.max.ms": s.stream_fetch_wait_ms})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(s.partitions)])
    got, t0 = 0, time.perf_counter()
    while got < n:
        got += sum(1 for m in c.consume(1000, 1.0) if m.error() is None)
    dt = time.perf_counter() - t0
    c.close()
    return n / dt


def dataflow_throughput(s: Settings, workers: int) -> tuple[float, float]:
    """(events/s, CPU µs per event) of the feature dataflow from the first offset to the end, in
    this process with the process settings of ``recsys stream`` (``streams.runner.tune_gc``).
    The CPU figure (this process, all its threads) is steadier than the rate on a shared VM."""
    tune_gc()
    flow = build_flow(s, flow_id="bench", tail=False)
    n = sum(kafka.high_watermarks(_probe(s), s.topic("clickstream")).values())
    t0, cpu0 = time.perf_counter(), time.process_time()
    if workers == 1:
        run_main(flow)
    else:
        from bytewax.run import cli_main

        cli_main(flow, workers_per_process=workers)
    return n / (time.perf_counter() - t0), (time.process_time() - cpu0) / max(n, 1) * 1e6


def _probe(s: Settings) -> Consumer:
    return Consumer({**s.kafka_config(), "group.id": "bench-probe"})


def freshness(s: Settings, rate: float, seconds: float, users: int, items: int, seed: int
              ) -> dict[str, Any]:
    """Run the dataflow as a process, produce at a steady rate, read its freshness histogram."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")},
           "RECSYS_KAFKA_BOOTSTRAP": s.kafka_config()["bootstrap.servers"],
           "RECSYS_REDIS_URL": s.redis_url, "RECSYS_TOPIC_PREFIX": s.topic_prefix + "fresh.",
           "RECSYS_REDIS_PREFIX": s.redis_prefix + "f", "RECSYS_STREAM_RECOVERY": "false",
           "RECSYS_STREAM_METRICS_PORT": str(port), "RECSYS_STATE_DIR": str(s.state_dir)}
    fs = s.replace(topic_prefix=s.topic_prefix + "fresh.")
    kafka.ensure_topics(fs, fs.all_topics(), fs.partitions)
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        sv.wait_until(lambda: bool(sv.scrape(port)), 60, "the dataflow's metrics", None)
        time.sleep(2.0)  # let the source assign its partitions
        p = kafka.producer(fs)
        rng = random.Random(seed)
        n = int(rate * seconds)
        start = time.perf_counter()
        before = sv.scrape(port)
        for i in range(n):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            user = f"u{rng.randrange(users)}"
            p.produce(fs.topic("clickstream"), key=user.encode(), value=make_event(
                event_id=f"f{i}", ts_ms=int(time.time() * 1000), user_id=user,
                type=events_pb2.VIEW, item_id=f"i{rng.randrange(items)}"))
            p.poll(0)
        p.flush(10)
        time.sleep(2.0)
        after = sv.scrape(port)
        q = {x: sv.histogram_quantile(x, after, before, "recsys_stream_freshness_seconds")
             for x in (0.5, 0.99)}
        achieved = n / (time.perf_counter() - start - 2.0)
        return {"freshness_p50_ms": round((q[0.5] or 0) * 1000, 1),
                "freshness_p99_ms": round((q[0.99] or 0) * 1000, 1),
                "freshness_rate": round(achieved, 1),
                "freshness_events": int(sv.total(after, "recsys_stream_events_in_total"))}
    finally:
        proc.terminate()
        proc.wait(20)


def run(settings: Settings, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="recsys-bench-") as tmp:
        s = settings.replace(state_dir=tmp, topic_prefix=f"bench{int(time.time())}.",
                             redis_prefix=f"bench{int(time.time())}", stream_recovery=False)
        with embedded_stack(s, Path(tmp)) as s:
            return _run(s, args)


def _run(s: Settings, args: argparse.Namespace) -> int:
    kafka.ensure_topics(s, s.all_topics(), s.partitions)
    t0 = int(time.time() * 1000) - 3600_000
    print(f"producing {args.events} events ({args.users} users, {args.items} items)...", flush=True)
    catalog = [(f"i{j}".encode(), events_pb2.ItemUpsert(
        item_id=f"i{j}", category=f"c{j % 50}", price=5.0 + j % 100, active=True,
        updated_ms=t0).SerializeToString()) for j in range(args.items)]
    _produce(s, "catalog", catalog)
    _produce(s, "clickstream", _events(args.events, args.users, args.items, args.seed, t0))
    raw = raw_consume(s, args.events)
    print(f"raw consume loop:  {raw:10.0f} events/s", flush=True)
    flow, cpu_us = dataflow_throughput(s, args.workers)
    print(f"feature dataflow:  {flow:10.0f} events/s  ({flow / raw:.3f} of raw), "
          f"{cpu_us:.1f} CPU µs per event", flush=True)
    fresh = freshness(s, args.rate, args.freshness_s, args.users, args.items, args.seed)
    print(f"freshness at {fresh['freshness_rate']:.0f} events/s: p50 {fresh['freshness_p50_ms']} ms, "
          f"p99 {fresh['freshness_p99_ms']} ms", flush=True)
    report = {"events": args.events, "dataflow_events_per_s": round(flow, 1),
              "raw_consume_events_per_s": round(raw, 1), "ratio": round(flow / raw, 4),
              "dataflow_cpu_us_per_event": round(cpu_us, 2),
              **fresh, "cores": os.cpu_count(), "workers": args.workers,
              "partitions": s.partitions, "users": args.users, "items": args.items}
    print(json.dumps(report, indent=2))
    if args.report:
        write_json(args.report, report)
    return 0
