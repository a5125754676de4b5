"""Benchmarks: each prints ratios against a baseline measured in the same run and writes JSON.

``recsys bench ann|stream|serve|fused [options] --report PATH``. Each kind is a module of
``recsys.bench`` exposing ``add_arguments(parser)`` and ``run(settings, args) -> int``,
registered by name in ``BENCHES``; one that fails to import fails the CLI loudly.
"""

from __future__ import annotations

import argparse
import importlib

from core.settings import Settings
from core.signals import exit_on_sigterm

HELP = "benchmarks (ann, stream, serve, fused) with same-run baselines, JSON reports"

BENCHES = {
    "ann": "recsys.bench.ann",
    "stream": "recsys.bench.stream",
    "serve": "recsys.bench.serve",
    "fused": "recsys.bench.fused",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="bench", metavar="KIND", required=True)
    for kind, module in BENCHES.items():
        mod = importlib.import_module(module)
        sp = kinds.add_parser(kind, help=(mod.__doc__ or kind).strip().splitlines()[0])
        mod.add_arguments(sp)


def run(settings: Settings, args: argparse.Namespace) -> int:
    # SIGTERM unwinds like Ctrl-C: the benches' finally blocks stop the scorers, brokers and
    # Redis servers they started instead of leaving them running
    exit_on_sigterm()
    mod = importlib.import_module(BENCHES[args.bench])
    return int(mod.run(settings, args) or 0)
