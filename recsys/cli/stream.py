"""Run a dataflow: `features` (clickstream, catalog, users, impressions -> Redis state, bad input
-> dead letters), `labels` (impressions joined with actions -> training examples) or
`embeddings` (incremental item2vec -> item vectors + changelog for the HNSW replicas)."""

from __future__ import annotations

import argparse

from core.settings import Settings
from streams.runner import FLOWS, run_stream

HELP = "run a Bytewax dataflow (features, labels or embeddings)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flow", choices=sorted(FLOWS), default="features",
                   help="features (live state), labels (training examples), embeddings (item vectors)")
    p.add_argument("--workers", type=int, default=None, help="worker threads in this process")
    p.add_argument("--process-id", type=int, default=None, help="this process's index (cluster)")
    p.add_argument("--addresses", default=None,
                   help="cluster: comma-separated host:port of every process, same order everywhere")
    p.add_argument("--no-tail", action="store_true", help="stop at the end of the topics")
    p.add_argument("--epoch-s", type=float, default=2.0, help="snapshot interval (recovery)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    addresses = args.addresses.split(",") if args.addresses else None
    _builder, topics, _port = FLOWS[args.flow]
    target = {
        "features": f"redis (prefix {settings.redis_prefix!r}), bad input -> "
                    f"{settings.topic('dead_letter')}",
        "labels": settings.topic("training"),
        "embeddings": "item vectors in redis + the embedding changelog (HNSW replicas follow it)",
    }.get(args.flow, "")
    print(f"{args.flow} dataflow: {', '.join(settings.topic(t) for t in topics)} -> {target}; "
          f"recovery {'on' if settings.stream_recovery else 'off'}", flush=True)
    run_stream(settings, flow_id=args.flow, workers=args.workers, process_id=args.process_id,
               addresses=addresses, tail=not args.no_tail, epoch_s=args.epoch_s)
    return 0
