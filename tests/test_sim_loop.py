"""The simulator in a real closed loop: Kafka, the feature dataflow (`recsys stream`), Redis
and the gRPC scorer, for a few wall seconds of a fast sim clock."""

from __future__ import annotations

import subprocess
import sys
import time

import redis

from core import kafka
from online.server import build_server
from proto import events_pb2
from proto.keys import Keys
from sim.config import WorldConfig
from sim.simulator import Simulator
from tests.conftest import ROOT, settings_env

REPORT_KEYS = {"events", "requests", "rpc_errors", "rpc_p50_ms", "rpc_p99_ms", "ctr", "arms",
               "sim_hours", "comparisons", "purchases_pending"}
ARM_KEYS = {"impressions", "ctr", "ctr_ci95", "cart_rate", "cvr", "revenue_per_mille", "best_ctr"}


def _consume(settings, topic: str, expect: int, timeout_s: float = 20.0) -> list[bytes]:
    c = kafka.consumer(settings, group=f"check-{topic}")
    c.subscribe([settings.topic(topic)])
    out: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < expect and time.monotonic() < deadline:
        for m in c.consume(500, 0.5):
            if not m.error():
                out.append(m.value())
    c.close()
    return out


def test_closed_loop_against_live_scorer_and_dataflow(settings):
    s = settings.replace(ab_arms="model,popular")
    cfg = WorldConfig().with_(catalog={"n_items": 200, "n_categories": 10, "seed": 5},
                            users={"n_users": 300},
                            run={"speed": 120.0, "warmup_s": 2.0, "oracle_share": 0.2},
                            dynamics={"new_items_per_h": 60.0})
    stream = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream"], cwd=ROOT,
                              env=settings_env(s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    scorer = build_server(s, port=0)
    try:
        sim = Simulator(s, f"127.0.0.1:{scorer.port}", config=cfg)
        assert sim.publish_catalog() == 200
        t0 = time.time() * 1000
        sim.run(rate=8.0, duration_s=10.0)
        rep = sim.report()

        assert set(rep) >= REPORT_KEYS, REPORT_KEYS - set(rep)
        assert rep["rpc_errors"] == 0 and rep["requests"] > 20 and rep["events"] > 100
        assert {"model", "popular", "oracle"} <= set(rep["arms"])
        for arm in rep["arms"].values():
            assert set(arm) >= ARM_KEYS and arm["impressions"] > 0
            assert arm["ctr_ci95"][0] <= arm["ctr"] <= arm["ctr_ci95"][1] and 0 < arm["best_ctr"] <= 1
        # the gap analysis: explained model-arm calls priced by the truth at each stage
        gap = rep["arms"]["model"]["gap"]
        assert gap["requests"] > 0 and gap["slots"] > 0 and 0 < gap["oracle_ctr"] <= 1
        f = gap["oracle_fraction"]
        assert f["served"] <= f["retrieval_ceiling"] + 1e-9  # nothing served beats the best retrieved
        assert f["ranker_top_k"] <= f["retrieval_ceiling"] + 1e-9 and f["retrieval_ceiling"] <= 1 + 1e-9
        assert {"popular", "covisit"} & set(gap["retrieval_ceiling_by_source"])
        assert all(v["ctr"] <= gap["ctr"]["retrieval_ceiling"] + 1e-9
                   for v in gap["retrieval_ceiling_by_source"].values())
        assert "gap" not in rep["arms"]["oracle"]  # the oracle arm makes no call to explain
        assert abs(rep["sim_hours"] - 10 * 120 / 3600) < 0.05
        # sim time ends at wall "now": never in the future, so the dataflow accepts every event
        assert rep["sim_start_ms"] < t0 - 0.9 * 10 * 120 * 1000

        raw = _consume(s, "clickstream", rep["events"])
        assert len(raw) == rep["events"]
        evs = [events_pb2.Event.FromString(v) for v in raw]
        assert {events_pb2.VIEW, events_pb2.CLICK} <= {e.type for e in evs}
        assert all(rep["sim_start_ms"] <= e.event_time_ms <= time.time() * 1000 for e in evs)
        upserts = _consume(s, "catalog", 200)
        assert len(upserts) >= 200 + rep["catalog"]["new_items"] > 200

        # scorer lists the shoppers clicked were logged as impressions by the scorer
        clicked = {e.request_id for e in evs if e.type == events_pb2.CLICK and e.request_id}
        imps = {events_pb2.Impression.FromString(v).request_id
                for v in _consume(s, "impressions", rep["requests"])}
        assert clicked and clicked <= imps

        # the dataflow turned the simulator's events into live state the scorer reads
        r = redis.Redis.from_url(s.redis_url)
        keys = Keys(s.redis_prefix)
        deadline = time.monotonic() + 30
        while r.zcard(keys.popular()) == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.zcard(keys.popular()) > 0
        assert r.exists(keys.session(evs[-1].user_id))
    finally:
        scorer.stop(0)
        stream.terminate()
        out = stream.communicate(timeout=20)[0].decode(errors="replace")
    assert "Traceback" not in out, out[-3000:]
