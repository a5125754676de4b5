"""Push synthetic clickstream events (protobuf ``Event``, key = user id) to the clickstream
topic at a fixed rate, with a live events/s line and a summary.

Examples::

    recsys produce --rate 1000 --duration 30
    recsys produce --rate 5000 --count 100000 --users 10000 --items 5000 --seed 1

Without ``--duration`` or ``--count`` it runs until Ctrl-C (then flushes and summarises).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from core.reports import write_json
from core.settings import Settings
from core.terminal import LiveStatus
from sim.produce import ProduceError, ProduceStats, produce

HELP = "synthetic clickstream events to Kafka at a target rate"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate", type=float, required=True, help="events per second")
    p.add_argument("--duration", type=float, help="seconds to run")
    p.add_argument("--count", type=int, help="events to produce")
    p.add_argument("--users", type=int, help="distinct users (default: settings sim_users)")
    p.add_argument("--items", type=int, help="distinct items (default: settings sim_items)")
    p.add_argument("--seed", type=int, help="content seed (default: settings sim_seed)")
    p.add_argument("--report", type=Path, help="write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no live status line")


def run(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    last = [0, 0.0]

    def status(stats: ProduceStats, t: float) -> None:
        inst = (stats.produced - last[0]) / max(t - last[1], 1e-9)
        last[0], last[1] = stats.produced, t
        line = (f"[produce] {t:6.0f}s  {stats.produced} events  {inst:8.1f} ev/s "
                f"(target {args.rate:g})  delivered {stats.delivered}  failed {stats.failed}")
        live.update({"elapsed": f"{t:.0f}s", "events": stats.produced, "ev/s": f"{inst:.1f}",
                     "target": f"{args.rate:g}", "delivered": stats.delivered,
                     "failed": stats.failed}, line=line)

    try:
        with LiveStatus("recsys produce", enabled=False if args.quiet else None) as live:
            stats = produce(
                settings, args.rate, duration_s=args.duration, count=args.count,
                users=args.users, items=args.items, seed=args.seed,
                status=None if args.quiet else status, should_stop=stop.is_set,
            )
    except ProduceError as exc:
        print(f"recsys produce: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    rep = stats.report()
    print(f"[produce] {rep['produced']} events to {settings.topic('clickstream')} in "
          f"{rep['elapsed_s']:.2f}s: {rep['rate']:.1f} ev/s (target {args.rate:g}, "
          f"{rep['rate_error_pct']:+.2f}%), delivered {rep['delivered']}, "
          f"failed {rep['failed']} {rep['errors'] or ''}".rstrip())
    if args.report:
        write_json(args.report, rep)
    return 0 if stats.failed == 0 and not stats.errors else 1
