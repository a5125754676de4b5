"""Serving benchmark: Recommend (full two-stage path) vs a bare gRPC echo, same framework.

1. the baseline first, on the quiet machine: a bare echo server on the same gRPC host and
   event loop, driven at rising rates (``--echo-rates``);
2. loads ``--items`` items into Redis: catalog rows, item stats, popularity, top sellers,
   trending per category, new items, co-visitation lists, user sessions and features, and a
   64-d vector per item (embedding store + changelog); builds the HNSW snapshot the scorer
   loads; registers a multi-task ranker (the promoted `mmoe` of the state dir if there is one,
   else an untrained MMoE: latency is what is measured) and promotes an untrained content
   two-tower of the retraining loop's shape with its own 1M-item index, so the ANN source
   asks its session tower for the query vector as the live system does once the loop has
   promoted one (``--no-tower``: pooled item2vec vectors, the path before);
3. starts `recsys serve` and, once every worker has preloaded its item rows
   (``item_preload``), drives open-loop load at rising rates (``sim.loadtest``).

For each target it finds the highest rate with p99 <= ``--slo-ms``, no errors and 95% of the
rate achieved (a step that misses is re-run ``--retries`` times: transient VM stalls; every
try is kept, with its per-second p99s). It then measures p50/p99 at half of Recommend's max and
reads per-stage p99s from the scorers' metrics (all workers) and, per worker, its share of the
half-load run and its mean handler and ranking times (``half_load_per_worker``).

The load generator holds ``--channels-per-worker`` HTTP/2 connections per worker and sends
each call to the worker with the fewest calls in flight (``--balance process``: what an L7
balancer such as Envoy does with an endpoint per worker; the echo baseline, one process, gets
as many connections). While the load runs, a thread plays the feature dataflow:
``--item-changes-per-s`` item stats rewritten and announced on the item changelog
(``bench_data.ItemChurn``), so the scorers re-read changed rows as they do in production.
Starts an embedded broker and redis unless RECSYS_KAFKA_BOOTSTRAP / RECSYS_REDIS_URL are set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core import grpc_env
from core.huge_pages import thp_mode
from core.redis_client import redis_client
from core.reports import write_json
from core.settings import Settings, settings_to_env
from models.fused import bf16_native
from models.registry import TWO_TOWER, ModelRegistry, default_root
from recsys import supervisor as sv
from recsys.bench.echo import EchoProcess
from recsys.bench.serve_data import SESSION_ITEMS, ItemChurn, load_items, prepare_ranker, register_tower
from recsys.embedded.redis_server import free_port
from recsys.embedded.stack import embedded_stack
from sim.loadtest import BALANCES, LoadResult, recommend_requests, run_open_loop


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--rates", default="100,200,300,400,500,600,800,1000",
                   help="comma-separated Recommend rates to try, rising")
    p.add_argument("--echo-rates", default="500,1000,1500,2000,2500,3000,4000,5000,6000",
                   help="comma-separated echo rates to try, rising (empty: no baseline)")
    p.add_argument("--step-s", type=float, default=8.0, help="seconds per rate")
    p.add_argument("--slo-ms", type=float, default=50.0, help="p99 bound for a rate to count")
    p.add_argument("--retries", type=int, default=1, help="re-runs of a step that misses the SLO")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="scorer processes on one port (SO_REUSEPORT); default one per core")
    p.add_argument("--no-ann", action="store_true", help="skip vectors / the HNSW source")
    p.add_argument("--no-tower", action="store_true",
                   help="serve the ANN source from pooled item2vec vectors instead of a promoted "
                        "two-tower's session tower (the live loop promotes one within minutes)")
    p.add_argument("--item-changes-per-s", type=float, default=1000.0,
                   help="item stats rewritten and announced per second during the load, as the "
                        "feature dataflow would (popular items most often); 0: a frozen catalog")
    p.add_argument("--balance", choices=BALANCES, default="process",
                   help="how the load generator spreads calls over the scorer processes "
                   "(sim.loadtest): process (default: least request, as an L7 balancer with "
                   "an endpoint per worker) or channel (blind round robin, as any client of one "
                   "SO_REUSEPORT address: give it ~128 channels per worker for an even split)")
    p.add_argument("--channels-per-worker", type=int, default=8,
                   help="HTTP/2 connections per scorer process (default 8; the echo baseline, "
                   "one process, gets as many)")
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--seed", type=int, default=3)


def max_rate(address: str, target: str, rates: list[float], step_s: float, slo_ms: float,
             make_request: Any, channels: int = 4, retries: int = 1, balance: str = "channel",
             processes: int | None = None) -> tuple[float, list[dict[str, Any]]]:
    """The highest of ``rates`` (rising) that meets the SLO; a step that misses it is run
    again up to ``retries`` times (a shared VM has transient stalls) and every try is kept."""
    best, runs = 0.0, []
    for rps in rates:
        for attempt in range(retries + 1):
            res: LoadResult = run_open_loop(target, address, rps, step_s, make_request, channels=channels,
                                            balance=balance, processes=processes)
            rep = res.report()
            ok = rep["errors"] == 0 and rep["p99_ms"] <= slo_ms and rep["achieved_rps"] >= 0.95 * rps
            keep = ("achieved_rps", "p50_ms", "p99_ms", "errors", "degraded_rate")
            runs.append({"rps": rps, "ok": ok, "attempt": attempt + 1, **{k: rep[k] for k in keep},
                         "p99_ms_by_second": [t["p99_ms"] for t in rep["timeline"]]})
            print(f"  {target:9s} {rps:6.0f} rps: achieved {rep['achieved_rps']:7.1f}, "
                  f"p50 {rep['p50_ms']:6.1f} ms, p99 {rep['p99_ms']:7.1f} ms, errors {rep['errors']}, "
                  f"degraded {rep['degraded_rate']:.3f} {'ok' if ok else 'OVER'}", flush=True)
            if ok:
                break
        if not ok:
            break
        best = rps
    return best, runs


def stage_p99(befores: list[sv.Samples], afters: list[sv.Samples]) -> dict[str, float]:
    """p99 (ms) of each stage over the observations between the scrapes, every worker's
    histogram buckets summed (each worker is scraped on its own port)."""
    name = "recsys_serve_stage_seconds_bucket"

    def merged(scrapes: list[sv.Samples], stage: str) -> sv.Samples:
        acc: dict[str, float] = {}
        for samples in scrapes:
            for lab, v in samples.get(name, []):
                if lab.get("stage") == stage:
                    acc[lab["le"]] = acc.get(lab["le"], 0.0) + v
        return {"h_bucket": [({"le": le}, v) for le, v in acc.items()]}
    stages = {lab["stage"] for samples in afters for lab, _ in samples.get(name, [])}
    out = {}
    for stage in sorted(stages):
        q = sv.histogram_quantile(0.99, merged(afters, stage), merged(befores, stage), "h")
        if q is not None:
            out[stage] = round(q * 1000, 2)
    return out


def run(settings: Settings, args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="recsys-bench-serve-") as tmp:
        s = settings.replace(state_dir=tmp, redis_prefix="bs", topic_prefix="bs.",
                             candidates=args.candidates, ann_enabled=not args.no_ann,
                             grpc_port=free_port(), serve_metrics_port=free_port(),
                             cache_ttl_s=0.0)  # measure the full path, not the result cache
        with embedded_stack(s, Path(tmp)) as s:
            return _run(s, settings, args)


def _run(s: Settings, original: Settings, args: argparse.Namespace) -> int:
    # the baseline first, while the machine is quiet (nothing loaded or serving yet)
    echo_rates = _rates(args.echo_rates)
    echo_max, echo_runs = 0.0, list[dict[str, Any]]()
    if echo_rates:
        with EchoProcess(loop=s.grpc_event_loop) as echo:
            echo_max, echo_runs = max_rate(echo.address, "echo", echo_rates, args.step_s,
                                           args.slo_ms, None, args.channels_per_worker,
                                           args.retries)
    client = redis_client(s, url=s.redis_url, timeout_s=None)  # bulk loads: no socket timeout
    t0 = time.perf_counter()
    tower = None if args.no_ann or args.no_tower else register_tower(s, min(args.items, SESSION_ITEMS))
    loaded = load_items(client, s, args.items, args.users, with_vectors=not args.no_ann,
                        seed=args.seed, tower_version=tower)
    if tower is not None:  # its item index is written: the scorers will use it from the start
        ModelRegistry(default_root(s.state_dir)).promote(TWO_TOWER, tower)
    print(f"loaded {args.items} items / {args.users} users in {time.perf_counter() - t0:.0f}s: "
          f"{ {k: v for k, v in loaded.items() if not hasattr(v, 'shape')} }", flush=True)
    model = prepare_ranker(s, original)
    print(f"ranker: {model}", flush=True)
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "serve",
                             "--workers", str(args.workers)], env=settings_to_env(s))
    address = f"127.0.0.1:{s.grpc_port}"
    try:
        ports = [s.serve_metrics_port + i for i in range(args.workers)]
        t_ready = time.perf_counter()
        sv.wait_until(lambda: all(_preloaded(p) for p in ports), 900, "the scorer's item warm-up",
                      None, 0.5)
        print(f"scorer ready (item rows preloaded) after {time.perf_counter() - t_ready:.0f}s", flush=True)
        make = recommend_requests(users=args.users, k=args.k, seed=args.seed)
        channels = args.channels_per_worker * args.workers
        processes = args.workers if args.balance == "process" else None
        with ItemChurn(client, s, loaded, args.item_changes_per_s, args.seed) as churn:
            run_open_loop("recommend", address, 20, 5, make, channels=channels)  # warm up
            rec_max, rec_runs = max_rate(address, "recommend", _rates(args.rates), args.step_s,
                                         args.slo_ms, make, channels, args.retries, args.balance,
                                         processes)
            half = max(rec_max / 2, 10.0)
            befores = [sv.scrape(p) for p in ports]  # stage figures: the half-load run only
            rep = run_open_loop("recommend", address, half, args.step_s * 2, make,
                                channels=channels, balance=args.balance,
                                processes=processes).report()
            afters = [sv.scrape(p) for p in ports]
            after = afters[0]
    finally:
        proc.terminate()
        proc.wait(30)
    report = {
        "items": args.items, "candidates": args.candidates, "echo_max_rps": echo_max,
        "recommend_max_rps": rec_max, "ratio": round(rec_max / echo_max, 4) if echo_max else None,
        "p50_ms": rep["p50_ms"], "p99_ms": rep["p99_ms"], "half_load_rps": half,
        "half_load_degraded_rate": rep["degraded_rate"],
        # per second of the half-load run: one stalled second shows as one outlier here
        "half_load_p99_ms_by_second": [t["p99_ms"] for t in rep["timeline"]],
        "stage_p99_ms": stage_p99(befores, afters),
        "half_load_per_worker": [per_worker(b, a) for b, a in zip(befores, afters, strict=True)],
        "item_changes_per_s": args.item_changes_per_s, "item_changes_written": churn.written,
        "item_changes_read_worker0": sv.total(after, "recsys_serve_item_changes_total"),
        "cores": os.cpu_count(), "workers": args.workers, "int8": s.ranker_int8,
        "ranker_bf16": s.ranker_bf16, "bf16_native": bf16_native(),
        "serve_huge_pages": s.serve_huge_pages, "thp": thp_mode(), "grpc_io": grpc_env.describe(),
        "slo_ms": args.slo_ms, "balance": args.balance, "channels": channels,
        "model": model,
        "ann": not args.no_ann, "tower": tower,
        "ann_queries_worker0": {space: sv.total(after, "recsys_serve_ann_queries_total", space=space)
                                for space in ("tower", "item2vec")},
        "load": os.getloadavg()[0], "recommend_runs": rec_runs,
        "echo_runs": echo_runs,
    }
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_runs")}, indent=2))
    if args.report:
        write_json(args.report, report)
    return 0


def per_worker(before: sv.Samples, after: sv.Samples) -> dict[str, float | None]:
    """One worker's share of a run and its mean handler and ranking-stage times (ms): workers
    of one run can differ (how SO_REUSEPORT spread the connections; this VM's per-process
    memory speed, BENCHMARKS.md)."""
    def delta(name: str, **match: str) -> float:
        return sv.total(after, name, **match) - sv.total(before, name, **match)

    def mean_ms(hist: str, **match: str) -> float | None:
        n = delta(f"{hist}_count", **match)
        return round(delta(f"{hist}_sum", **match) / n * 1000, 3) if n else None
    return {"requests": delta("recsys_serve_requests_total"),
            "handler_mean_ms": mean_ms("recsys_serve_latency_seconds"),
            "ranking_mean_ms": mean_ms("recsys_serve_stage_seconds", stage="ranking")}


def _preloaded(port: int) -> bool:
    samples = sv.scrape(port).get("recsys_serve_item_preload_done", [])
    return any(v >= 1 for _, v in samples)


def _rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


__all__ = ["add_arguments", "run"]
