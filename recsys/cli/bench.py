"""Benchmarks: each prints ratios against a baseline measured in the same run and writes JSON.

``recsys bench ann|stream|serve [options] --report PATH``. Each kind lives beside the code it
measures and exposes ``add_arguments(parser)`` and ``run(settings, args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import signal

from recsys.settings import Settings

NAME = "bench"
HELP = "benchmarks (ann, stream, serve) with same-run baselines, JSON reports"

BENCHES = {
    "ann": "online.ann.bench",
    "stream": "streams.bench",
    "serve": "online.bench_serve",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    for kind, module in BENCHES.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue  # not built yet
        sp = kinds.add_parser(kind, help=(mod.__doc__ or kind).strip().splitlines()[0])
        mod.add_arguments(sp)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run(settings: Settings, args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C: the benches' finally blocks stop the scorers, brokers and
    # Redis servers they started instead of leaving them running
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    mod = importlib.import_module(BENCHES[args.bench])
    return int(mod.run(settings, args) or 0)
