"""Live view of the dataflows' lag: per-partition consumer lag, freshness p50/p99, throughput.

Tails the Prometheus endpoints of `recsys stream` (features and labels flows). Refreshes in
place; ``--once --json`` prints one snapshot for scripts (rates over ``--interval``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from core.settings import Settings
from core.terminal import LiveStatus, interactive, isatty
from recsys import supervisor as sv

if TYPE_CHECKING:
    from rich.console import RenderableType

HELP = "live stream lag / freshness / throughput view (or --once --json)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="JSON output (with --once)")
    p.add_argument("--interval", type=float, default=1.0, help="refresh / rate interval, seconds")
    p.add_argument("--port", action="append", type=int, default=None,
                   help="metrics port of a dataflow process (repeatable; default: settings)")


def snapshot(before: sv.Samples, now: sv.Samples, dt: float) -> dict[str, Any]:
    lag = {f"{lab.get('topic')}/{lab.get('partition')}": int(v)
           for lab, v in now.get("recsys_stream_consumer_lag", [])}

    def rate(name: str) -> float:
        return round((sv.total(now, name) - sv.total(before, name)) / dt, 1) if before else 0.0

    def q(x: float) -> float | None:
        v = sv.histogram_quantile(x, now, before, "recsys_stream_freshness_seconds")
        if v is None:  # nothing in the interval: fall back to everything since start
            v = sv.histogram_quantile(x, now, {}, "recsys_stream_freshness_seconds")
        return None if v is None else round(v * 1000, 1)

    return {
        "up": bool(now), "lag": lag, "total_lag": sum(lag.values()),
        "freshness_p50_ms": q(0.5), "freshness_p99_ms": q(0.99),
        "events_in_per_s": rate("recsys_stream_events_in_total"),
        "state_writes_per_s": rate("recsys_stream_state_writes_total"),
        "dead_letters_per_s": rate("recsys_stream_dead_letters_total"),
        "examples_per_s": rate("recsys_labels_examples_total"),
        "dead_letters_total": int(sv.total(now, "recsys_stream_dead_letters_total")),
    }


def render(snaps: dict[int, dict[str, Any]]) -> str:
    lines = [f"recsys lag  {time.strftime('%H:%M:%S')}   (Ctrl-C to quit)", ""]
    for port, s in snaps.items():
        if not s["up"]:
            lines.append(f":{port}  not reachable")
            continue
        lines.append(f":{port}  total lag {s['total_lag']}  freshness p50 {s['freshness_p50_ms']} ms "
                     f"p99 {s['freshness_p99_ms']} ms  in {s['events_in_per_s']}/s  "
                     f"writes {s['state_writes_per_s']}/s  DLQ {s['dead_letters_per_s']}/s")
        for part, lag in sorted(s["lag"].items()):
            bar = "#" * min(40, lag // 10 + (1 if lag else 0))
            lines.append(f"    {part:<40} {lag:>8}  {bar}")
    return "\n".join(lines)


def table(snaps: dict[int, dict[str, Any]]) -> RenderableType:
    """The live view (rich): one row per dataflow, then its partitions' lag."""
    from rich import box
    from rich.console import Group
    from rich.table import Table

    title = f"recsys lag  {time.strftime('%H:%M:%S')}   (Ctrl-C to quit)"
    top = Table(box=box.SIMPLE_HEAD, show_edge=False, title=title, title_justify="left",
                title_style="bold")
    for col in ("port", "total lag", "fresh p50 ms", "fresh p99 ms", "in/s", "writes/s", "DLQ/s"):
        top.add_column(col, justify="left" if col == "port" else "right", no_wrap=True)
    parts = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for col in ("port", "topic/partition", "lag", ""):
        parts.add_column(col, justify="right" if col == "lag" else "left", no_wrap=True)
    for port, s in snaps.items():
        if not s["up"]:
            top.add_row(f":{port}", "not reachable", *[""] * 5)
            continue
        top.add_row(f":{port}", str(s["total_lag"]), str(s["freshness_p50_ms"]),
                    str(s["freshness_p99_ms"]), str(s["events_in_per_s"]),
                    str(s["state_writes_per_s"]), str(s["dead_letters_per_s"]))
        for part, lag in sorted(s["lag"].items()):
            parts.add_row(f":{port}", part, str(lag), "#" * min(40, lag // 10 + (1 if lag else 0)))
    return Group(top, parts) if parts.row_count else top


def run(settings: Settings, args: argparse.Namespace) -> int:
    ports = args.port or [settings.stream_metrics_port, settings.labels_metrics_port]
    before = {p: sv.scrape(p) for p in ports}
    # redraws in place on a terminal (stdout too: a redirected stdout gets the snapshots);
    # else one plain snapshot per interval on stdout
    live = not args.once and interactive() and isatty(sys.stdout)
    with LiveStatus(enabled=live, file=sys.stdout) as view:
        while True:
            time.sleep(args.interval)
            now = {p: sv.scrape(p) for p in ports}
            snaps = {p: snapshot(before[p], now[p], args.interval) for p in ports}
            before = now
            if args.once:
                if args.json:
                    print(json.dumps({str(p): s for p, s in snaps.items()}, indent=2))
                else:
                    print(render(snaps))
                return 0 if any(s["up"] for s in snaps.values()) else 1
            view.show(table(snaps) if live else "", render(snaps) + "\n")
