"""Run the closed-loop simulator: shoppers browse, call Recommend, react by a hidden truth.

The shop (items, users, truth, behaviour, dynamics, speed, warm-up, oracle share) is
configured by one TOML file (``--world FILE``; ``--print-world`` shows every knob and its
default). Sim time runs ``--speed`` times faster than wall time and ends at wall "now".
The report compares the A/B arms (``--set ab_arms=model,popular,random``) and the
simulator's own ``oracle`` arm, after ``--warmup-s`` wall seconds, with 95% CIs; ``--report``
also writes ``learning_curve.json`` and ``learning_curve.png`` next to it (sim/curve.py).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core.metrics_endpoint import start_metrics
from core.reports import write_json
from core.settings import Settings
from core.signals import stop_on_signals
from core.terminal import LiveStatus
from sim.config import WorldConfigError, load_config
from sim.simulator import Simulator

HELP = "closed-loop shopper simulator (the demo and load driver)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=0, help="wall seconds (0 = until Ctrl-C)")
    p.add_argument("--rate", type=float, default=None, help="sessions per wall second (settings default)")
    p.add_argument("--k", type=int, default=None, help="items per homepage list (world file default)")
    p.add_argument("--address", default=None, help="scorer host:port (default from settings)")
    p.add_argument("--report", type=Path, default=None, help="write a JSON report here")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--world", type=Path, default=None, help="TOML file of world / behaviour knobs")
    p.add_argument("--speed", type=float, default=None, help="sim seconds per wall second")
    p.add_argument("--warmup-s", type=float, default=None, help="wall seconds excluded from arm stats")
    p.add_argument("--oracle-share", type=float, default=None, help="share of users the oracle serves")
    p.add_argument("--print-world", action="store_true", help="print the effective world file and exit")


def _config(settings: Settings, args: argparse.Namespace) -> Any:
    cfg = load_config(settings, args.world)
    run = {k: v for k, v in (("speed", args.speed), ("warmup_s", args.warmup_s),
                             ("oracle_share", args.oracle_share), ("k", args.k)) if v is not None}
    return cfg.with_(run=run)


def summary(report: dict[str, Any]) -> str:
    lines = [f"sim {report.get('sim_hours', 0):.2f} h, {report['events']} events, "
             f"{report['requests']} requests ({report['rpc_errors']} errors), "
             f"p50 {report['rpc_p50_ms']:.1f} ms p99 {report['rpc_p99_ms']:.1f} ms"]
    for name, a in report["arms"].items():
        lo, hi = a["ctr_ci95"]
        lines.append(f"  {name:8s} imps {a['impressions']:>7}  CTR {a['ctr']:.4f} [{lo:.4f}, {hi:.4f}]"
                     f"  expected {a['ctr_expected']:.4f}  best {a['best_ctr']:.4f}"
                     f"  of-best {a['oracle_fraction']:.2f}  cart {a['cart_rate']:.4f}"
                     f"  rev/mille {a['revenue_per_mille']:.1f}")
    for name, c in report.get("comparisons", {}).items():
        lo, hi = c["ctr_diff_ci95"]
        ratio = f"  ratio {c['ctr_ratio']:.3f}" if "ctr_ratio" in c else ""
        lines.append(f"  {name:18s} diff {c['ctr_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}]{ratio}")
    return "\n".join(lines)


def run(settings: Settings, args: argparse.Namespace) -> int:
    try:
        cfg = _config(settings, args)
    except WorldConfigError as exc:
        print(f"recsys sim: {exc}", file=sys.stderr)
        return 2
    if args.print_world:
        print(cfg.to_toml())
        return 0
    address = args.address or f"{settings.grpc_host}:{settings.grpc_port}"
    rate = args.rate or settings.sim_shoppers_per_s
    if settings.sim_metrics_port:
        start_metrics(settings, settings.sim_metrics_port)
    sim = Simulator(settings, address, config=cfg)
    n = sim.publish_catalog()
    w = sim.world
    print(f"simulator: {len(w.users)} users ({sum(u.bot for u in w.users)} bots), {n} items published "
          f"to {settings.topic('catalog')}; {rate:g} sessions/s at {cfg.run.speed:g}x against {address}; "
          f"arms {','.join(settings.ab_arms)} + oracle ({cfg.run.oracle_share:.0%} of users); "
          f"warm-up {cfg.run.warmup_s:g}s", flush=True)
    stop = stop_on_signals()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sim.run(rate, args.duration, stop)
        except Exception as exc:  # noqa: BLE001 - reported below, exit code 1
            errors.append(exc)

    worker = threading.Thread(target=target, daemon=True)
    t0 = time.monotonic()
    worker.start()
    last_events, last_t = 0, t0
    with LiveStatus("recsys sim  (Ctrl-C stops)", enabled=False if args.quiet else None) as live:
        while worker.is_alive():
            worker.join(1.0)
            if args.quiet:
                continue
            rep = sim.report()
            now = time.monotonic()
            eps = (rep["events"] - last_events) / max(now - last_t, 1e-6)
            last_events, last_t = rep["events"], now
            live.update(
                {"wall": f"{now - t0:.0f}s", "sim h": f"{rep['sim_hours']:.2f}", "events": rep["events"],
                 "events/s": f"{eps:.0f}", "recs": rep["requests"], "p99 ms": f"{rep['rpc_p99_ms']:.1f}",
                 "errors": rep["rpc_errors"], "CTR": f"{rep['ctr']:.3f}",
                 "pending buys": rep.get("purchases_pending", 0)},
                line=f"[sim {now - t0:6.0f}s | {rep['sim_hours']:6.2f} sim h] events {rep['events']:>8} "
                f"({eps:6.0f}/s)  recs {rep['requests']:>6}  p99 {rep['rpc_p99_ms']:6.1f} ms  "
                f"errors {rep['rpc_errors']}  CTR {rep['ctr']:.3f}  "
                f"pending buys {rep.get('purchases_pending', 0)}")
    if errors:
        print(f"recsys sim: {errors[0]}", file=sys.stderr)
        return 1
    report = sim.report()
    print(f"simulator done: {summary(report)}", flush=True)
    if args.report:
        write_json(args.report, report)
        if report["learning_curve"]["hours"]:
            from sim.curve import write_learning_curve

            write_learning_curve(report["learning_curve"], args.report.parent,
                                 title=f"recsys sim: {report['sim_hours']:.1f} sim hours")
    return 0
