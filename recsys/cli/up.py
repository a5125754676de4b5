"""Run the whole product on the embedded stack: broker, redis, dataflow, scorer and the
closed-loop simulator, supervised, with a live status line and a JSON report (and, next to
it, ``learning_curve.json`` and ``learning_curve.png``: the model arm's CTR per sim hour against
``oracle`` and ``popular``, see sim/curve.py).

Ctrl-C (or --duration) shuts everything down cleanly, simulator first, broker last. A crashed
dataflow, scorer or simulator is restarted (up to 3 times); broker or redis dying is fatal.
Set RECSYS_KAFKA_BOOTSTRAP / RECSYS_REDIS_URL to use real Kafka / Redis instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from core.reports import write_json
from core.settings import BROKER_FILE, REDIS_FILE, Settings
from core.signals import stop_on_signals
from core.terminal import LiveStatus
from recsys import supervisor as sv

HELP = "run everything (embedded broker + redis, dataflow, scorer, simulator)"

# The long-running processes `up` supervises (besides an embedded broker / redis): child name
# -> its `recsys` argv. docker-compose.yml runs each as a service (tests/test_compose.py).
ROLES: dict[str, tuple[str, ...]] = {
    "stream": ("stream",),
    "labels": ("stream", "--flow", "labels"),
    "embeddings": ("stream", "--flow", "embeddings"),
    "retrain": ("retrain", "--only", "ranker"),
    "retrain-tower": ("retrain", "--only", "tower"),
    "serve": ("serve",),
    "sim": ("sim",),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=0, help="stop after N seconds (0 = Ctrl-C)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON report here at the end")
    p.add_argument("--rate", type=float, default=None, help="simulated shoppers per second")
    p.add_argument("--speed", type=float, default=None, help="simulator clock speed (x wall time)")
    p.add_argument("--warmup-s", type=float, default=None, help="simulator warm-up excluded from arms")
    p.add_argument("--world", default=None, help="simulator world TOML (see `recsys sim --print-world`)")


def _global_args(settings: Settings, args: argparse.Namespace) -> list[str]:
    g = ["--state-dir", str(settings.state_dir)]
    if args.config:
        g += ["--config", args.config]
    for item in args.set:
        g += ["--set", item]
    if not any(item.startswith("label_time_scale=") for item in args.set):
        # the label join's waits follow the simulator's clock (attribution stays in event time)
        g += ["--set", f"label_time_scale={_sim_speed(args)}"]
    return g


def _sim_speed(args: argparse.Namespace) -> float:
    if args.speed is not None:
        return float(args.speed)
    from sim.config import load_config

    return float(load_config(path=args.world).run.speed)


def _healthy(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


class Status:
    """Scrapes the children's metrics once a second and keeps what the report needs."""

    def __init__(self, s: Settings) -> None:
        self.s = s
        self.prev: dict[str, sv.Samples] = {"stream": {}, "serve": {}, "sim": {}, "labels": {}}
        self.cur: dict[str, sv.Samples] = dict(self.prev)
        self.max_lag = 0.0
        self.t_prev = time.monotonic()

    def poll(self) -> dict[str, float]:
        ports = {"stream": self.s.stream_metrics_port, "serve": self.s.serve_metrics_port,
                 "sim": self.s.sim_metrics_port, "labels": self.s.labels_metrics_port}
        self.prev = self.cur
        self.cur = {name: sv.scrape(port) or self.prev[name] for name, port in ports.items()}
        now = time.monotonic()
        dt, self.t_prev = max(now - self.t_prev, 1e-6), now
        lag = sv.total(self.cur["stream"], "recsys_stream_consumer_lag")
        self.max_lag = max(self.max_lag, lag)

        def rate(src: str, name: str) -> float:
            return (sv.total(self.cur[src], name) - sv.total(self.prev[src], name)) / dt

        p99 = sv.histogram_quantile(0.99, self.cur["serve"], self.prev["serve"],
                                    "recsys_serve_latency_seconds")
        shown = sv.total(self.cur["sim"], "recsys_sim_impressions_total")
        ctr = sv.total(self.cur["sim"], "recsys_sim_clicks_total") / shown if shown else 0.0
        return {"events/s": rate("sim", "recsys_sim_events_total"), "lag": lag,
                "RPS": rate("serve", "recsys_serve_requests_total"), "p99 ms": (p99 or 0) * 1000,
                "CTR": ctr}

    @staticmethod
    def line(elapsed: float, m: dict[str, float]) -> str:
        """One plain status line (no TTY: a line per update)."""
        return (f"[up {elapsed:5.0f}s] events/s {m['events/s']:6.0f} | lag {m['lag']:5.0f} | "
                f"RPS {m['RPS']:5.1f} | p99 {m['p99 ms']:6.1f} ms | CTR {m['CTR']:.3f}")

    @staticmethod
    def table(elapsed: float, m: dict[str, float]) -> dict[str, str]:
        """The live table's cells."""
        return {"up": f"{elapsed:.0f}s", "events/s": f"{m['events/s']:.0f}", "lag": f"{m['lag']:.0f}",
                "RPS": f"{m['RPS']:.1f}", "p99 ms": f"{m['p99 ms']:.1f}", "CTR": f"{m['CTR']:.3f}"}

    def totals(self) -> dict[str, float]:
        served = sv.total(self.cur["serve"], "recsys_serve_requests_total")
        degraded = sv.total(self.cur["serve"], "recsys_serve_requests_total", outcome="degraded")
        return {
            "events_processed": sv.total(self.cur["stream"], "recsys_stream_events_in_total",
                                         topic=self.s.topic("clickstream")),
            "recommendations_served": served,
            "fallback_rate": degraded / served if served else 0.0,
            "dead_letters": sv.total(self.cur["stream"], "recsys_stream_dead_letters_total"),
            "training_examples": sv.total(self.cur["labels"], "recsys_labels_examples_total"),
        }


PORT_SETTINGS = ("grpc_port", "serve_metrics_port", "stream_metrics_port", "labels_metrics_port",
                 "embeddings_metrics_port", "sim_metrics_port")


def busy_ports(settings: Settings) -> list[str]:
    """Port settings whose port cannot be bound on localhost (another process holds it)."""
    busy = []
    for name in PORT_SETTINGS:
        port = getattr(settings, name)
        if not port:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{name}={port}")
    return busy


def run(settings: Settings, args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    busy = busy_ports(settings)
    if busy:
        print(f"[up] error: port(s) already in use: {', '.join(busy)}. Stop what holds them or "
              f"choose others, e.g. --set {busy[0].split('=')[0]}=<free port>", file=sys.stderr)
        return 2
    state = Path(settings.state_dir)
    logs = state / "logs"
    g = _global_args(settings, args)
    embedded_kafka, embedded_redis = not settings.kafka_bootstrap, not settings.redis_url
    for stale in (BROKER_FILE, REDIS_FILE):
        (state / stale).unlink(missing_ok=True)
    if embedded_kafka:  # a fresh in-memory broker: old stream offsets would be meaningless
        shutil.rmtree(state / "recovery", ignore_errors=True)
    children: list[sv.Child] = []
    stop = stop_on_signals()

    def start(name: str, *sub: str, restartable: bool = True) -> sv.Child:
        child = sv.Child(name, sv.recsys_argv(g, *sub), logs / f"{name}.log", restartable)
        child.start()
        children.append(child)
        return child

    report: dict[str, Any] = {}
    status = Status(settings)
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    try:
        if embedded_kafka:
            b = start("broker", "broker", restartable=False)
            sv.wait_until(lambda: (state / BROKER_FILE).exists(), 30, "the embedded broker", b)
            print(f"[up] {b.tail(2)}", flush=True)
        if embedded_redis:
            r = start("redis", "redis", restartable=False)
            sv.wait_until(lambda: (state / REDIS_FILE).exists(), 30, "redis-server", r)
            print(f"[up] {r.tail(1)}", flush=True)
        stream = start("stream", *ROLES["stream"])
        start("labels", *ROLES["labels"])
        start("embeddings", *ROLES["embeddings"])
        if settings.retrain_interval_s > 0:
            start("retrain", *ROLES["retrain"])
        if settings.tower_retrain_interval_s > 0:
            start("retrain-tower", *ROLES["retrain-tower"])
        scorer = start("serve", *ROLES["serve"])
        sv.wait_until(lambda: _healthy(address), 60, f"the scorer on {address}", scorer)
        print(f"[up] scorer SERVING on {address}; dataflow running (logs in {logs})", flush=True)
        sim_s = max(args.duration - (time.monotonic() - t_start), 5.0) if args.duration else 0
        sim_argv = [*ROLES["sim"], "--quiet", "--duration", f"{sim_s:.1f}",
                    "--report", str(state / "sim-report.json")]
        for flag, value in (("--rate", args.rate), ("--speed", args.speed),
                            ("--warmup-s", args.warmup_s), ("--world", args.world)):
            if value is not None:
                sim_argv += [flag, str(value)]
        sim = start("sim", *sim_argv)
        print("[up] simulator started; Ctrl-C stops everything", flush=True)
        with LiveStatus("recsys up  (Ctrl-C stops everything)") as live:
            while not stop.wait(1.0):
                elapsed, m = time.monotonic() - t_start, status.poll()
                live.update(Status.table(elapsed, m), line=Status.line(elapsed, m))
                if sim.proc is not None and sim.proc.poll() == 0:
                    break  # the simulator finished its duration
                for child in children:
                    if child.alive():
                        continue
                    if not child.restartable or child.restarts >= child.max_restarts:
                        raise RuntimeError(f"{child.name} died (exit {child.proc and child.proc.returncode}):"
                                           f"\n{child.tail()}")
                    child.restarts += 1
                    print(f"[up] {child.name} exited; restarting ({child.restarts})", flush=True)
                    child.start()
        sim.stop()
        for _ in range(20):  # let the dataflow drain what the simulator produced
            status.poll()
            if sv.total(status.cur["stream"], "recsys_stream_consumer_lag") == 0:
                break
            time.sleep(0.5)
        report = _report(state, status, stream)
        print(f"[up] {json.dumps(report)}", flush=True)
        if args.report:
            write_json(args.report, report)
            print(f"[up] report written to {args.report}", flush=True)
            for path in write_curve(report, args.report.parent):
                print(f"[up] learning curve written to {path}", flush=True)
        return 0
    except RuntimeError as exc:
        print(f"[up] error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for child in reversed(children):
            child.stop()
        print("[up] all processes stopped", flush=True)


def _report(state: Path, status: Status, stream: sv.Child) -> dict[str, Any]:
    try:
        sim = json.loads((state / "sim-report.json").read_text())
    except (OSError, ValueError):
        sim = {}
    return {
        "events_produced": sim.get("events", 0),
        **status.totals(),
        "rpc_errors": sim.get("rpc_errors", 0),
        "rpc_p50_ms": sim.get("rpc_p50_ms", 0.0),
        "rpc_p99_ms": sim.get("rpc_p99_ms", 0.0),
        "ctr": sim.get("ctr", 0.0),
        "max_stream_lag": status.max_lag,
        "sim_requests": sim.get("requests", 0),
        "arms": sim.get("arms", {}),
        "comparisons": sim.get("comparisons", {}),
        "learning_curve": sim.get("learning_curve", {}),
        "sim_hours": sim.get("sim_hours", 0.0),
        "stream_restarts": stream.restarts,
    }


def write_curve(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``learning_curve.json`` and ``.png`` (``sim/curve.py``) of a report that has sim hours."""
    curve = report.get("learning_curve") or {}
    if not curve.get("hours"):
        return []
    from sim.curve import write_learning_curve

    return write_learning_curve(curve, out_dir, title=f"recsys up: {curve.get('arm', 'model')} arm, "
                                f"{report.get('sim_hours', 0.0):.1f} sim hours")
