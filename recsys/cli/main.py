"""Entry point: ``recsys [--config F] [--set KEY=VALUE ...] SUBCOMMAND ...``.

Subcommands are discovered from the modules of this package: each defines ``NAME``,
``HELP``, ``add_arguments(parser)`` and ``run(settings, args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from types import ModuleType
from typing import Any

from recsys import grpc_env

grpc_env.apply()  # before any subcommand imports gRPC: it reads its I/O engine choice once

import recsys.cli as cli_pkg  # noqa: E402
from recsys.settings import SettingsError, load_settings  # noqa: E402

_SKIP = {"main", "common"}


def subcommands() -> dict[str, ModuleType]:
    found: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(cli_pkg.__path__):
        if info.name in _SKIP or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"recsys.cli.{info.name}")
        if hasattr(mod, "NAME") and hasattr(mod, "run"):
            found[mod.NAME] = mod
    return dict(sorted(found.items()))


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
