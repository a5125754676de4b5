"""A bare gRPC echo service: the baseline the serving benchmark compares Recommend against.

Same framework as the scorer (``grpc.aio`` on its own event-loop thread, handlers inline:
``online.aio_host``), the same server options and the same health checking and reflection as
a real service, but no work in the handler, so ``Recommend latency - Echo latency`` is the
cost of recommending, not of gRPC.

Run it in its own process (so a load generator does not share its GIL)::

    python -m recsys.bench.echo --port 0     # prints {"port": N, "pid": P}

or from Python: ``make_echo_server()`` in-process, ``EchoProcess()`` as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from core.signals import stop_on_signals
from online.aio_host import EVENT_LOOPS, AioServer
from online.server import GRPC_OPTIONS
from proto import recommend_pb2, recommend_pb2_grpc

ECHO_SERVICE = "recsys.v1.EchoService"

# The same server options as the scorer (one source of truth: online.server).
SERVER_OPTIONS: list[tuple[str, Any]] = list(GRPC_OPTIONS)


class EchoServicer(recommend_pb2_grpc.EchoServiceServicer):
    async def Echo(  # type: ignore[override]
        self, request: recommend_pb2.EchoRequest, context: grpc.aio.ServicerContext
    ) -> recommend_pb2.EchoReply:
        return recommend_pb2.EchoReply(payload=request.payload)


def make_echo_server(host: str = "127.0.0.1", port: int = 0, loop: str = "uvloop") -> AioServer:
    """A started echo server (``.port``: the port it bound; ``port=0`` picks a free one) on
    event loop ``loop`` (``online.aio_host.EVENT_LOOPS``)."""
    return AioServer(
        lambda server: recommend_pb2_grpc.add_EchoServiceServicer_to_server(EchoServicer(), server),
        f"{host}:{port}", [ECHO_SERVICE], SERVER_OPTIONS, loop=loop)


class EchoProcess:
    """The echo server in a child process (``python -m recsys.bench.echo``); a context manager."""

    def __init__(self, host: str = "127.0.0.1", timeout_s: float = 20.0, loop: str = "uvloop") -> None:
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recsys.bench.echo", "--host", host, "--port", "0", "--loop", loop],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env,
        )
        self.host = host
        self.port = self._read_port(timeout_s)

    def _read_port(self, timeout_s: float) -> int:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line.strip():
            self.stop()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"echo server process did not start within {timeout_s}s: {err}")
        return int(json.loads(line)["port"])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> EchoProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.echo", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--loop", choices=EVENT_LOOPS, default="uvloop", help="the gRPC thread's event loop")
    args = p.parse_args(argv)
    try:
        server = make_echo_server(args.host, args.port, args.loop)
    except OSError as exc:
        print(f"echo: {exc}", file=sys.stderr)
        return 2
    stop = stop_on_signals()
    print(json.dumps({"port": server.port, "pid": os.getpid()}), flush=True)
    while not stop.wait(0.5):
        pass
    server.stop(grace=1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
