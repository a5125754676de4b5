"""Open-loop gRPC load test of Recommend (or the Echo baseline): fixed-rate schedule,
latency from the scheduled send time (no coordinated omission), HDR-style percentiles.

Examples::

    recsys loadtest --target echo --rps 1000 --duration 10         # own echo server
    recsys loadtest --rps 500 --duration 30 --report lt.json --plot lt.png
    recsys loadtest --target echo --rps 1000,2000,3000 --plot sweep.png   # a rate sweep

``--rps`` takes one rate or a comma-separated sweep; the JSON report is one object
(``target_rps, achieved_rps, p50_ms, p90_ms, p99_ms, p999_ms, errors, degraded_rate`` and
extras) or, for a sweep, ``{"runs": [...]}``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from core.settings import Settings
from core.terminal import LiveStatus
from sim.loadtest import (
    BALANCES,
    LoadResult,
    LoadTestError,
    echo_requests,
    parse_address,
    recommend_requests,
    run_open_loop,
)

HELP = "open-loop gRPC load test (Recommend or the Echo baseline), JSON report + PNG plot"


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rps expects numbers, got {text!r}") from None
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError(f"--rps must be > 0, got {text!r}")
    return rates


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rps", type=_rates, required=True,
                   help="requests per second, or a comma-separated sweep (1000,2000,3000)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per rate (default 10)")
    p.add_argument("--target", choices=("recommend", "echo"), default="recommend")
    p.add_argument("--address", help="HOST:PORT (default: settings grpc_host:grpc_port; "
                   "for --target echo, an echo server started in a subprocess)")
    p.add_argument("--users", type=int, help="distinct user ids (default: settings sim_users)")
    p.add_argument("--k", type=int, help="items per request (default: settings k_default)")
    p.add_argument("--user-prefix", default="u", help="user id prefix (default 'u': u0, u1..)")
    p.add_argument("--payload-bytes", type=int, default=64, help="echo payload size")
    p.add_argument("--timeout-ms", type=float, default=1000.0, help="per-call deadline")
    p.add_argument("--channels", type=int, default=4, help="HTTP/2 connections (round robin)")
    p.add_argument("--balance", choices=BALANCES, default="channel",
                   help="channel: round robin over connections (default); process: least request "
                   "over the server processes they reach (Recommend's served_by; sim.loadtest)")
    p.add_argument("--processes", type=int,
                   help="with --balance process: how many server processes share the address; "
                   "connections are added until each has its share of --channels")
    p.add_argument("--seed", type=int, help="request mix seed (default: settings sim_seed)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--plot", type=Path, help="write a PNG latency plot here (needs matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no per-second progress line")


def _progress(live: LiveStatus, duration: float) -> Callable[[int, LoadResult], None]:
    """The per-second status: a live table on a terminal, else one line per second."""

    def show(sec: int, res: LoadResult) -> None:
        done = res.ok + res.errors
        line = (f"[loadtest {res.target_rps:g} rps] {sec}/{duration:g}s sent {res.sent} "
                f"done {done} errors {res.errors} in-flight {res.sent - done}")
        live.update({"elapsed": f"{sec}/{duration:g}s", "sent": res.sent, "done": done,
                     "errors": res.errors, "in-flight": res.sent - done}, line=line)

    return show


def run(settings: Settings, args: argparse.Namespace) -> int:
    from recsys.bench.echo import EchoProcess  # the server side, only when we start one

    if args.plot is not None:  # fail before the run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("recsys loadtest: --plot needs matplotlib (pip install matplotlib)",
                  file=sys.stderr)
            return 2
    if args.processes is not None and args.balance != "process":
        print("recsys loadtest: --processes needs --balance process", file=sys.stderr)
        return 2
    users = args.users if args.users is not None else settings.sim_users
    k = args.k if args.k is not None else settings.k_default
    seed = args.seed if args.seed is not None else settings.sim_seed
    results: list[LoadResult] = []
    with ExitStack() as stack:
        try:
            if args.address:
                address = parse_address(args.address)
            elif args.target == "echo":
                echo = stack.enter_context(EchoProcess())
                address = echo.address
                print(f"[loadtest] echo server started in a subprocess on {address}",
                      file=sys.stderr)
            else:
                address = parse_address(f"{settings.grpc_host}:{settings.grpc_port}")
            if args.target == "echo":
                make_request = echo_requests(args.payload_bytes)
            else:
                make_request = recommend_requests(users, k, settings.surfaces, seed,
                                                  args.user_prefix)
            for rps in args.rps:
                with LiveStatus(f"recsys loadtest {args.target} {rps:g} rps",
                                enabled=False if args.quiet else None) as live:
                    res = run_open_loop(
                        args.target, address, rps, args.duration, make_request,
                        timeout_s=args.timeout_ms / 1000.0, channels=args.channels,
                        progress=None if args.quiet else _progress(live, args.duration),
                        balance=args.balance, processes=args.processes,
                    )
                print(res.summary(), flush=True)
                results.append(res)
        except (LoadTestError, RuntimeError, OSError) as exc:
            print(f"recsys loadtest: {exc}", file=sys.stderr)
            return 2
    reports = [r.report() for r in results]
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        doc = reports[0] if len(reports) == 1 else {"runs": reports}
        args.report.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"[loadtest] report: {args.report}")
    if args.plot:
        from sim.plot import PlotError, plot_results

        try:
            print(f"[loadtest] plot: {plot_results(results, args.plot)}")
        except PlotError as exc:
            print(f"recsys loadtest: {exc}", file=sys.stderr)
            return 2
    return 1 if any(r.ok == 0 for r in results) else 0
