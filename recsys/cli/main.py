"""Entry point: ``recsys [--config F] [--set KEY=VALUE ...] SUBCOMMAND ...``.

Subcommands are registered by name in ``COMMANDS`` (one module each, like Feast's ``cli/``):
each module defines ``HELP``, ``add_arguments(parser)`` and ``run(settings, args) -> int``.
A module that fails to import fails the CLI loudly; nothing is discovered or skipped.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType
from typing import Any

from core import grpc_env

grpc_env.apply()  # before any subcommand imports gRPC: it reads its I/O engine choice once

from core.settings import SettingsError, load_settings  # noqa: E402

# subcommand -> module (under recsys.cli); the one table of what `recsys` can do
COMMANDS: dict[str, str] = {
    "ab": "recsys.cli.ab",
    "bench": "recsys.cli.bench",
    "broker": "recsys.cli.broker",
    "lag": "recsys.cli.lag",
    "loadtest": "recsys.cli.loadtest",
    "produce": "recsys.cli.produce",
    "redis": "recsys.cli.redis",
    "replay": "recsys.cli.replay",
    "retrain": "recsys.cli.retrain",
    "serve": "recsys.cli.serve",
    "sim": "recsys.cli.sim",
    "stream": "recsys.cli.stream",
    "train": "recsys.cli.train",
    "up": "recsys.cli.up",
}


def subcommands() -> dict[str, ModuleType]:
    return {name: importlib.import_module(module) for name, module in COMMANDS.items()}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = argparse.ArgumentParser(
        prog="recsys", description="Streaming-first real-time e-commerce recommender"
    )
    parser.add_argument("--config", help="TOML settings file (else $RECSYS_CONFIG)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override one setting (repeatable); env RECSYS_<KEY> works too",
    )
    parser.add_argument("--state-dir", help="where the embedded stack publishes its addresses")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = subcommands()
    for name, mod in mods.items():
        sp = subs.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(sp)
    return parser, mods


def main(argv: list[str] | None = None) -> int:
    parser, mods = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key.strip()] = value
    if args.state_dir:
        overrides["state_dir"] = args.state_dir
    try:
        settings = load_settings(config_file=args.config, overrides=overrides)
    except SettingsError as exc:
        print(f"recsys: settings error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(mods[args.command].run(settings, args) or 0)
    except SettingsError as exc:
        print(f"recsys {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
