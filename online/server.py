"""Server factory and the `recsys serve` main loop.

``build_server(settings, port=0)`` binds (port 0 = a free port, for tests) and returns a
started ``ScorerServer`` with health checking and server reflection: a ``grpc.aio`` server on
its own event-loop thread (``online.aio_host``) that runs each Recommend inline. One process
per core: run several `recsys serve` processes on the same port (SO_REUSEPORT is on by default).
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import grpc.aio
import redis

from core import grpc_env, huge_pages
from core.metrics_endpoint import start_metrics
from core.redis_client import redis_client
from core.settings import Settings, resolve_redis_url, settings_to_env
from core.signals import stop_on_signals
from models.registry import default_root
from online import scorer_metrics as metrics
from online.aio_host import AioServer
from online.ann.follower import IndexFollower
from online.errors import grpc_errors
from online.impressions import ImpressionLogger
from online.item_feed import ItemChangeFollower
from online.ranking import ModelHolder, default_loader
from online.servicer import RecommendServicer
from online.store import RedisStore, StateStore
from online.tower import TowerHolder
from proto import recommend_pb2, recommend_pb2_grpc
from proto.keys import Keys

log = logging.getLogger(__name__)
SERVICE_NAME = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
# BDP probing off: gRPC would ping on each connection's data to size its flow-control window
# (a win for bulk transfers; our messages are a few KB) and so wake more threads per call; off,
# a bare echo call costs the server 0.67 instead of 0.89 ms of CPU (BENCHMARKS.md).
GRPC_OPTIONS = [("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                ("grpc.http2.bdp_probe", 0)]


class RecommendService(recommend_pb2_grpc.RecommendServiceServicer):
    """The RPC face of ``RecommendServicer``: run inline on the server's event loop (CPU-bound
    work, one process per core); domain errors become a gRPC status (``online.errors``)."""

    def __init__(self, core: RecommendServicer) -> None:
        self.core = core

    @grpc_errors
    async def Recommend(self, request: recommend_pb2.RecommendRequest,  # type: ignore[override]
                        context: grpc.aio.ServicerContext) -> recommend_pb2.RecommendResponse:
        return self.core.Recommend(request, context)


@dataclass
class ScorerServer:
    host: AioServer
    port: int
    servicer: RecommendServicer
    refresher: Refresher
    models: ModelHolder
    follower: IndexFollower | None = None
    item_changes: ItemChangeFollower | None = None
    tower: TowerHolder | None = None

    def stop(self, grace: float = 2.0) -> None:
        self.host.stop(grace)
        _stop_background(self.refresher, self.models, self.follower, self.item_changes,
                         self.servicer.impressions, tower=self.tower)


def _stop_background(refresher: Refresher, models: ModelHolder, follower: IndexFollower | None,
                     item_changes: ItemChangeFollower | None, impressions: ImpressionLogger | None,
                     flush_s: float = 5.0, tower: TowerHolder | None = None) -> None:
    """Stop the scorer's background threads; impressions still queued get ``flush_s``."""
    refresher.stop()
    models.stop()
    if tower is not None:
        tower.stop()
    if follower is not None:
        follower.stop()
    if item_changes is not None:
        item_changes.stop()
    if impressions is not None:
        impressions.close(flush_s)


class Refresher(threading.Thread):
    """Keeps the in-memory fallback list fresh; failures only log."""

    def __init__(self, servicer: RecommendServicer, store: StateStore, interval_s: float) -> None:
        super().__init__(name="refresher", daemon=True)
        self.servicer, self.store, self.interval_s = servicer, store, interval_s
        self._stop_evt = threading.Event()

    def refresh_once(self) -> None:
        try:
            self.servicer.fallback.refresh(self.store)
        except Exception as exc:  # noqa: BLE001 - a dependency outage must not kill the server
            log.warning("state refresh failed (serving from last known state): %s", exc)

    def run(self) -> None:
        while not self._stop_evt.wait(self.interval_s):
            self.refresh_once()

    def stop(self) -> None:
        self._stop_evt.set()


def _ann_follower(settings: Settings) -> IndexFollower | None:
    """The HNSW replica following the embedding changelog; serving goes on without it."""
    try:
        return IndexFollower.from_settings(settings, settings.embedding_dim,
                                           snapshot_dir=settings.state_dir / "ann").start()
    except Exception as exc:  # noqa: BLE001 - ANN is one retrieval source among several
        log.warning("ANN retrieval disabled (index follower failed to start): %s", exc)
        return None


def _item_changes(settings: Settings, store: StateStore) -> ItemChangeFollower | None:
    """The item changelog follower that keeps a ``RedisStore``'s in-memory item rows fresh
    (its own connection: XREAD BLOCK outlasts the request path's short socket timeout)."""
    if not isinstance(store, RedisStore):
        return None
    client = redis_client(settings, timeout_s=5.0, connect_timeout_s=1.0)
    return ItemChangeFollower(client, store.keys.item_changelog(), store,
                              refresh_hot_s=settings.item_refresh_hot_s).start()


def _preload_items(store: StateStore, n: int) -> None:
    """Warm the in-memory item rows with the ``n`` most viewed items, in the background
    (``recsys_serve_item_preload_done`` says when it is over)."""
    if not isinstance(store, RedisStore) or n <= 0:
        metrics.ITEM_PRELOAD.set(1)
        return

    def run() -> None:
        t0 = time.perf_counter()
        try:
            loaded = store.preload(n)
            log.info("item rows: %d most viewed items preloaded in %.1f s", loaded, time.perf_counter() - t0)
        except redis.RedisError as exc:
            log.warning("item preload stopped (rows load on demand): %s", exc)
        gc.freeze()  # what the warm-up built lives on: keep full collections from walking it
        metrics.ITEM_PRELOAD.set(1)
    threading.Thread(target=run, name="item-preload", daemon=True).start()


def build_server(settings: Settings, *, port: int | None = None, store: StateStore | None = None,
                 log_impressions: bool = True, ann: Any = None) -> ScorerServer:
    store = store or RedisStore(
        resolve_redis_url(settings), Keys(settings.redis_prefix), timeout_ms=settings.redis_timeout_ms,
        catalog_ttl_s=settings.catalog_ttl_s, item_stats_ttl_s=settings.item_stats_ttl_s,
        list_ttl_s=settings.list_ttl_s, max_items=settings.item_cache_max, settings=settings)
    impressions = ImpressionLogger(settings) if log_impressions else None
    models = ModelHolder(default_root(settings.state_dir), settings.ranker_model,
                         default_loader(settings.ranker_int8, settings.ranker_bf16),
                         settings.model_reload_s).start()
    follower = _ann_follower(settings) if settings.ann_enabled and ann is None else None
    index = ann if ann is not None else (lambda: follower.index if follower else None)
    # the promoted two-tower's session tower, when there is one (else item2vec pooling)
    tower = TowerHolder(settings).start() if settings.ann_enabled and ann is None else None
    servicer = RecommendServicer(settings, store, impressions, models, index,
                                 tower=(lambda: tower.current) if tower else None)
    item_changes = _item_changes(settings, store)
    refresher = Refresher(servicer, store, settings.top_sellers_refresh_s)
    refresher.refresh_once()
    refresher.start()
    _preload_items(store, settings.item_preload)
    bind_port = settings.grpc_port if port is None else port
    try:
        host = AioServer(
            lambda server: recommend_pb2_grpc.add_RecommendServiceServicer_to_server(
                RecommendService(servicer), server),
            f"{settings.grpc_host}:{bind_port}", [SERVICE_NAME], GRPC_OPTIONS,
            loop=settings.grpc_event_loop)
    except OSError as exc:  # nothing started here may outlive the failed start
        _stop_background(refresher, models, follower, item_changes, impressions, flush_s=1.0,
                         tower=tower)
        raise RuntimeError(str(exc)) from exc
    return ScorerServer(host, host.port, servicer, refresher, models, follower, item_changes, tower)


def serve(settings: Settings, workers: int | None = None, worker_index: int = 0) -> int:
    """Serve until SIGINT/SIGTERM. With ``workers`` > 1 this process starts ``workers - 1``
    more `recsys serve` processes on the same port (SO_REUSEPORT: the kernel spreads
    connections), one per core; worker i exposes metrics on ``serve_metrics_port + i``."""
    _single_threaded_math()
    workers = workers or settings.serve_workers
    children = [subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "serve",
                                  "--worker-index", str(i)], env=settings_to_env(settings))
                for i in range(1, workers)] if worker_index == 0 else []
    metrics_port = settings.serve_metrics_port + worker_index if settings.serve_metrics_port else 0
    if metrics_port:
        start_metrics(settings, metrics_port)
    scorer = build_server(settings)
    _tune_gc()
    print(f"scorer worker {worker_index}: RecommendService on {settings.grpc_host}:{scorer.port} "
          f"(health + reflection on); metrics on :{metrics_port}; malloc on huge pages: "
          f"{'yes' if huge_pages.active() else 'no'} (THP {huge_pages.thp_mode()}); gRPC I/O: "
          f"{grpc_env.describe()}, {scorer.host.loop_name} event loop", flush=True)
    stop = stop_on_signals()
    while not stop.wait(1.0):
        for child in children:
            if child.poll() is not None:
                log.error("scorer worker exited with %s; stopping", child.returncode)
                stop.set()
    for child in children:
        child.terminate()
    scorer.stop()
    for child in children:
        child.wait(10)
    return 0


def _tune_gc() -> None:
    """Serving allocates many short-lived objects per request and holds a large cache: with
    CPython's default thresholds, full collections walk the whole heap and stall requests
    (measured at 200k items: p99.9 102 ms -> 15 ms with this). Freeze what start-up loaded,
    and keep each young collection short: a request leaves ~250 new tracked objects behind
    (the co-visitation lists it cached), so a young generation of 50,000 took 6-10 ms to walk
    in a tight loop and up to 56-143 ms in a loaded worker (gc callbacks, 300 RPS); 2,000
    takes ~0.3 ms alone, 25 times as often, the same work in all. Middle and old generations are
    collected rarely (every 50 / 5,000 young collections)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(2_000, 50, 100)


def _single_threaded_math() -> None:
    """One scorer process per core: keep torch / BLAS to one intra-op thread each."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
