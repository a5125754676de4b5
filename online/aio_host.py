"""A ``grpc.aio`` server on its own event-loop thread, driven from synchronous code.

Why: with the thread-pool server (``grpc.server``) every call is handed from gRPC's poller
thread to a pool thread; in a scorer process (one per core, CPU-bound handlers) that hand-off
and the threads' fight over the GIL cost about 7% of the CPU per request (5 interleaved pairs
at 150 RPS, BENCHMARKS.md). Here one thread does all the gRPC work and runs each handler inline
on the event loop: a second call waits for the first, which it would do for the CPU anyway.

The loop is uvloop's (libuv, in C) unless ``loop="asyncio"``: the same server spends about
0.1 ms less CPU per call on it (echo at 300 RPS, BENCHMARKS.md). Where uvloop is not
installed, asyncio's loop runs instead, with a warning.

``AioServer(register, address, services)`` starts the server with standard health checking
(every service and the server SERVING) and reflection, and binds ``address`` (port 0 = a free
port: ``.port``); ``stop(grace)`` ends it and its loop thread. The echo baseline and the
scorer both use it: the benchmark compares them on the same framework.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from core.settings import GRPC_EVENT_LOOPS as EVENT_LOOPS

T = TypeVar("T")
log = logging.getLogger(__name__)


def new_event_loop(kind: str = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of ``kind`` (one of ``EVENT_LOOPS``)."""
    if kind not in EVENT_LOOPS:
        raise ValueError(f"event loop must be one of {EVENT_LOOPS}, got {kind!r}")
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("uvloop is not installed: serving gRPC on asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class AioServer:
    def __init__(self, register: Callable[[grpc.aio.Server], None], address: str,
                 services: Sequence[str], options: Sequence[tuple[str, Any]] = (),
                 timeout_s: float = 30.0, loop: str = "uvloop") -> None:
        self._loop = new_event_loop(loop)
        self._thread = threading.Thread(target=self._loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self._timeout_s = timeout_s
        try:
            self.server, self.port, self.health = self._run(
                self._start(register, address, list(services), list(options)))
        except BaseException:
            self._close_loop()
            raise

    @property
    def loop_name(self) -> str:
        """The event loop that runs (``uvloop``, or ``asyncio`` also where uvloop was missing)."""
        return "uvloop" if type(self._loop).__module__.startswith("uvloop") else "asyncio"

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)

    async def _start(self, register: Callable[[grpc.aio.Server], None], address: str,
                     services: list[str], options: list[tuple[str, Any]]
                     ) -> tuple[grpc.aio.Server, int, Any]:
        server = grpc.aio.server(options=options)
        register(server)
        servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        reflection.enable_server_reflection(
            (*services, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc raises when it cannot bind
            raise OSError(f"cannot bind gRPC on {address}: {exc}") from exc
        if port == 0:
            raise OSError(f"cannot bind gRPC on {address}")
        await server.start()
        for name in ("", *services):
            await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        return server, port, servicer

    def stop(self, grace: float = 2.0) -> None:
        """Health goes NOT_SERVING, calls in flight get ``grace`` seconds, then the loop ends."""
        if not self._thread.is_alive():
            return
        try:
            self._run(self.health.enter_graceful_shutdown())
            self._run(self.server.stop(grace))
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(self._timeout_s)
        if not self._thread.is_alive():
            self._loop.close()
