"""Server factory and the `recsys serve` main loop.

``build_server(settings, port=0)`` binds (port 0 = a free port, for tests) and returns a
started ``ScorerServer`` with health checking and server reflection. One process per core:
run several `recsys serve` processes on the same port (SO_REUSEPORT is on by default).
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from online import metrics
from online.impressions import ImpressionLogger
from online.servicer import RecommendServicer
from online.store import RedisStore, StateStore
from proto import recommend_pb2, recommend_pb2_grpc
from proto.keys import Keys
from recsys.settings import Settings, resolve_redis_url

log = logging.getLogger(__name__)
SERVICE_NAME = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
GRPC_OPTIONS = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 4 * 1024 * 1024)]


@dataclass
class ScorerServer:
    server: grpc.Server
    port: int
    servicer: RecommendServicer
    health: health.HealthServicer
    refresher: Refresher

    def stop(self, grace: float = 2.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.refresher.stop()
        if self.servicer.impressions is not None:
            self.servicer.impressions.close()


class Refresher(threading.Thread):
    """Keeps the fallback list and the in-memory catalog fresh; failures only log."""

    def __init__(self, servicer: RecommendServicer, store: StateStore, interval_s: float) -> None:
        super().__init__(name="refresher", daemon=True)
        self.servicer, self.store, self.interval_s = servicer, store, interval_s
        self._stop_evt = threading.Event()

    def refresh_once(self) -> None:
        try:
            self.servicer.fallback.refresh(self.store)
            refresh = getattr(self.store, "refresh_catalog", None)
            if refresh is not None:
                metrics.CATALOG_SIZE.set(refresh())
        except Exception as exc:  # noqa: BLE001 - a dependency outage must not kill the server
            log.warning("state refresh failed (serving from last known state): %s", exc)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval_s):
            self.refresh_once()

    def stop(self) -> None:
        self._stop_evt.set()


def build_server(settings: Settings, *, port: int | None = None, store: StateStore | None = None,
                 log_impressions: bool = True, max_workers: int = 16) -> ScorerServer:
    store = store or RedisStore(resolve_redis_url(settings), Keys(settings.redis_prefix),
                                timeout_ms=settings.redis_timeout_ms)
    impressions = ImpressionLogger(settings) if log_impressions else None
    servicer = RecommendServicer(settings, store, impressions)
    refresher = Refresher(servicer, store, settings.top_sellers_refresh_s)
    refresher.refresh_once()
    refresher.start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=GRPC_OPTIONS)
    recommend_pb2_grpc.add_RecommendServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    bind_port = settings.grpc_port if port is None else port
    bound = server.add_insecure_port(f"{settings.grpc_host}:{bind_port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC on {settings.grpc_host}:{bind_port}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return ScorerServer(server, bound, servicer, health_servicer, refresher)


def serve(settings: Settings) -> int:
    if settings.serve_metrics_port:
        start_http_server(settings.serve_metrics_port, addr="127.0.0.1")
    scorer = build_server(settings)
    print(f"scorer: RecommendService on {settings.grpc_host}:{scorer.port} "
          f"(health + reflection on); metrics on :{settings.serve_metrics_port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    scorer.stop()
    return 0
