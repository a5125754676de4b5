"""Run the gRPC scorer (RecommendService, with health checking and reflection)."""

from __future__ import annotations

import argparse
import sys

from core.huge_pages import reexec_with_huge_pages
from core.settings import Settings
from online.server import serve

HELP = "run the gRPC scorer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="gRPC port (default: settings.grpc_port)")
    p.add_argument("--workers", type=int, default=None,
                   help="scorer processes on the same port, one per core (default: serve_workers)")
    p.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)


def run(settings: Settings, args: argparse.Namespace) -> int:
    if settings.serve_huge_pages:  # once, before anything large is allocated (core.huge_pages)
        reexec_with_huge_pages("recsys.cli.main", sys.argv[1:])
    if args.port is not None:
        settings = settings.replace(grpc_port=args.port)
    return serve(settings, workers=args.workers, worker_index=args.worker_index)
