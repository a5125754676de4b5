"""Replay a real session dataset (RetailRocket with timestamps, or SR-GNN session files) as
VIEW events on the clickstream topic, with the original inter-arrival gaps / ``--speed``.

Examples::

    recsys replay ../shared/data/retailrocket_views --speed 600          # 7 days in ~17 min
    recsys replay ../shared/data/retailrocket_views/test_sessions_item_ts.jsonl.gz \\
        --speed inf --limit 5000                                          # as fast as possible
    recsys replay ../shared/data/yoochoose_1_64/train_sessions.txt.gz --gap-s 1 --speed 100

A directory means its timed file (``test_sessions_item_ts.jsonl.gz``) if present, else
``train_sessions.txt.gz``. Untimed (SR-GNN) files get synthetic times: consecutive events
``--gap-s`` apart (default 1 s), sessions one after another, the last event at start time.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from core.reports import write_json
from core.settings import Settings
from core.terminal import interactive, progress
from sim.replay import DEFAULT_GAP_S, ReplayError, ReplayStats, replay

HELP = "replay a real session dataset as timed clickstream events"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", type=Path, help="dataset directory or file")
    p.add_argument("--speed", type=float, default=1.0,
                   help="time compression: original gaps are divided by this (inf: no pacing)")
    p.add_argument("--limit", type=int, help="replay only the first N events (in time order)")
    p.add_argument("--gap-s", type=float, default=DEFAULT_GAP_S,
                   help="untimed datasets: synthetic seconds between consecutive events")
    p.add_argument("--user-prefix", default="replay-", help="session k becomes user PREFIXk")
    p.add_argument("--tag", default="", help="part of every event_id (a re-replay with a new "
                   "tag is new events; without, duplicates are dropped downstream)")
    p.add_argument("--report", type=Path, help="write the summary as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def run(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    bar_shown = not args.quiet and interactive()  # else a plain line per second (or none)

    def info(st: ReplayStats, t: float) -> str:
        return (f"{len(st.sessions)} sessions  {st.produced / max(t, 1e-9):.1f} ev/s  "
                f"dataset time {_utc(st.last_ts_ms)}")

    try:
        with progress("[replay] events sent", enabled=bar_shown) as bar:

            def status(st: ReplayStats, t: float) -> None:  # once a second
                if bar_shown:
                    bar.update(st.produced, total=st.total, info=info(st, t))
                    return
                pct = 100.0 * st.produced / st.total if st.total else 100.0
                print(f"[replay] {t:6.0f}s  {st.produced}/{st.total} events ({pct:5.1f}%)  "
                      f"{len(st.sessions)} sessions  {st.produced / max(t, 1e-9):8.1f} ev/s  "
                      f"dataset time {_utc(st.last_ts_ms)}", file=sys.stderr, flush=True)

            stats = replay(
                settings, args.dataset, speed=args.speed, limit=args.limit, gap_s=args.gap_s,
                user_prefix=args.user_prefix, tag=args.tag,
                status=None if args.quiet else status, should_stop=stop.is_set,
            )
            bar.update(stats.produced, total=stats.total, info=info(stats, stats.elapsed_s))
    except ReplayError as exc:
        print(f"recsys replay: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGINT, previous)
    rep = stats.report()
    print(f"[replay] {rep['dataset']}: {rep['events']} events from {rep['sessions']} sessions "
          f"to {settings.topic('clickstream')} in {rep['elapsed_s']:.2f}s ({rep['rate']:.1f} "
          f"ev/s; {rep['dataset_span_s']:.0f}s of dataset time from {_utc(rep['first_event_ms'])} "
          f"at speed {args.speed:g}), "
          f"delivered {rep['delivered']}, failed {rep['failed']} {rep['errors'] or ''}".rstrip())
    if args.report:
        write_json(args.report, rep)
    return 0 if stats.failed == 0 and not stats.errors else 1
