"""Run the gRPC scorer (RecommendService, with health checking and reflection)."""

from __future__ import annotations

import argparse

from online.server import serve
from recsys.settings import Settings

NAME = "serve"
HELP = "run the gRPC scorer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=None, help="gRPC port (default: settings.grpc_port)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    if args.port is not None:
        settings = settings.replace(grpc_port=args.port)
    return serve(settings)
