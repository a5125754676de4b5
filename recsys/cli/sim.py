"""Run the closed-loop simulator: shoppers browse, call Recommend, click by a hidden truth."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from prometheus_client import start_http_server

from recsys.settings import Settings
from sim.simulator import Simulator

NAME = "sim"
HELP = "closed-loop shopper simulator (the demo and load driver)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=0, help="seconds (0 = until Ctrl-C)")
    p.add_argument("--rate", type=float, default=None, help="shopper visits/s (settings default)")
    p.add_argument("--k", type=int, default=10, help="items requested per homepage visit")
    p.add_argument("--address", default=None, help="scorer host:port (default from settings)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    p.add_argument("--quiet", action="store_true", help="no live status line")


def run(settings: Settings, args: argparse.Namespace) -> int:
    address = args.address or f"{settings.grpc_host}:{settings.grpc_port}"
    rate = args.rate or settings.sim_shoppers_per_s
    if settings.sim_metrics_port:
        start_http_server(settings.sim_metrics_port, addr="127.0.0.1")
    sim = Simulator(settings, address, k=args.k)
    n = sim.publish_catalog()
    print(f"simulator: {settings.sim_users} users, {n} items published to "
          f"{settings.topic('catalog')}; {rate:g} shoppers/s against {address}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker = threading.Thread(target=sim.run, args=(rate, args.duration, stop), daemon=True)
    t0 = time.monotonic()
    worker.start()
    last_events, last_t = 0, t0
    while worker.is_alive():
        worker.join(1.0)
        if args.quiet:
            continue
        rep = sim.report()
        now = time.monotonic()
        eps = (rep["events"] - last_events) / max(now - last_t, 1e-6)
        last_events, last_t = rep["events"], now
        sys.stdout.write(
            f"\r[sim {now - t0:6.0f}s] events {rep['events']:>8} ({eps:6.0f}/s)  "
            f"recs {rep['requests']:>6}  p99 {rep['rpc_p99_ms']:6.1f} ms  "
            f"errors {rep['rpc_errors']}  CTR {rep['ctr']:.3f}   ")
        sys.stdout.flush()
    report = sim.report()
    print(f"\nsimulator done: {json.dumps({k: v for k, v in report.items() if k != 'arms'})}")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=2))
    return 0
