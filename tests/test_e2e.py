"""End to end with every part live: Kafka -> `recsys stream` (subprocess) -> Redis -> gRPC.

Also runs `recsys up` for a short closed loop and checks its report.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from core import kafka
from features.events import make_event
from online.server import build_server
from proto import events_pb2, recommend_pb2, recommend_pb2_grpc
from proto.keys import Keys
from recsys.embedded.redis_server import free_port
from tests.conftest import ROOT, settings_env


def test_click_to_fresh_recommendation_through_live_dataflow(settings, tmp_path):
    s = settings.replace(stream_recovery=True, state_dir=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream"], cwd=ROOT,
                            env=settings_env(s), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    scorer = build_server(settings, port=0, log_impressions=False)
    stub = recommend_pb2_grpc.RecommendServiceStub(grpc.insecure_channel(f"127.0.0.1:{scorer.port}"))
    try:
        producer = kafka.producer(settings)
        now = int(time.time() * 1000)
        n = 0
        for i in range(6):  # shoppers view "x" then "y": y becomes x's co-visited item
            for item in ("x", "y"):
                n += 1
                producer.produce(settings.topic("clickstream"), key=f"s{i}".encode(), value=make_event(
                    event_id=f"e{n}", ts_ms=now + n, user_id=f"s{i}", type=events_pb2.VIEW,
                    item_id=item))
        producer.flush(10)
        rc = __import__("redis").Redis.from_url(settings.redis_url)
        covis_x = Keys(settings.redis_prefix).covisit("x")
        deadline = time.monotonic() + 60
        while not rc.exists(covis_x) and time.monotonic() < deadline:  # dataflow started + caught up
            time.sleep(0.05)
        before = stub.Recommend(recommend_pb2.RecommendRequest(user_id="carol", k=3), timeout=5)
        assert "y" not in [i.item_id for i in before.items if "covisit" in i.sources]
        t0 = time.monotonic()
        producer.produce(settings.topic("clickstream"), key=b"carol", value=make_event(
            event_id="c1", ts_ms=now + 100, user_id="carol", type=events_pb2.VIEW, item_id="x"))
        producer.flush(10)
        first, waited = None, 0.0
        while time.monotonic() - t0 < 30:
            resp = stub.Recommend(recommend_pb2.RecommendRequest(user_id="carol", k=3), timeout=5)
            if resp.items and "covisit" in resp.items[0].sources:
                first, waited = resp.items[0].item_id, time.monotonic() - t0
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        assert first == "y", "carol's view of x never reached her recommendations"
        print(f"view -> fresh recommendation in {waited * 1000:.0f} ms")
        assert waited < 2.0  # seconds from a view to a recommendation that reflects it
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, not a crash
        out = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out and "stopped by a signal" in out, out[-3000:]
    finally:
        scorer.stop(0)
        proc.terminate()
        proc.wait(20)


def test_sigterm_stops_the_dataflow_cleanly(settings, tmp_path):
    """`docker stop` sends SIGTERM: the running dataflow ends as on Ctrl-C (exit 0, no traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream"], cwd=ROOT,
                            env=settings_env(settings.replace(state_dir=str(tmp_path))),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        producer = kafka.producer(settings)
        producer.produce(settings.topic("clickstream"), key=b"u1", value=make_event(
            event_id="t1", ts_ms=int(time.time() * 1000), user_id="u1", type=events_pb2.VIEW,
            item_id="x"))
        producer.flush(10)
        rc = __import__("redis").Redis.from_url(settings.redis_url)
        session = Keys(settings.redis_prefix).session("u1")
        deadline = time.monotonic() + 60
        while not rc.exists(session) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # the dataflow is running once it has applied the event
        assert rc.exists(session), "the dataflow never applied the event"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
        assert proc.returncode == 0, out[-3000:]
        assert "Traceback" not in out and "stopped by a signal" in out, out[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_up_runs_the_closed_loop_and_reports(tmp_path: Path):
    report = tmp_path / "report.json"
    names = ("grpc_port", "serve_metrics_port", "stream_metrics_port", "sim_metrics_port",
             "labels_metrics_port", "embeddings_metrics_port")
    ports = {name: free_port() for name in names}
    sets = [a for k, v in ports.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("RECSYS_")}
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path / "state"), *sets,
         "--set", "sim_items=300", "--set", "sim_users=300",
         "up", "--duration", "25", "--rate", "10", "--report", str(report)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(report.read_text())
    for key in ("events_produced", "events_processed", "recommendations_served", "rpc_errors",
                "rpc_p50_ms", "rpc_p99_ms", "fallback_rate", "ctr", "max_stream_lag"):
        assert key in r, key
    assert r["events_produced"] > 50
    assert r["events_processed"] == r["events_produced"]  # nothing lost
    assert r["recommendations_served"] > 20
    assert r["rpc_errors"] == 0
    assert 0 < r["ctr"] < 1
    assert "all processes stopped" in out.stdout
    # `up` stops its dataflows with SIGINT: a clean stop in each one's log, no traceback
    flows = {p.stem: p.read_text() for p in (tmp_path / "state" / "logs").glob("*.log")
             if p.stem in ("stream", "labels", "embeddings")}
    assert set(flows) == {"stream", "labels", "embeddings"}, sorted(flows)
    for name, text in flows.items():
        assert "Traceback" not in text and "stopped by a signal" in text, f"{name}: {text[-3000:]}"
