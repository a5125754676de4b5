"""The closed-loop simulator wired to the real system: the gRPC scorer and Kafka.

``Simulator(settings, address, k)`` builds the seeded world (``sim/world.py``, configured by
``sim/config.py``), ``publish_catalog()`` sends the launch catalog and user profiles, and
``run(rate, duration_s, stop)`` plays the shop (``sim/shop.py``) on a ``SimClock``: ``rate``
sessions per WALL second on average (modulated by the sim hour of day), ``run.speed`` sim
seconds per wall second. ``report()`` is the JSON report (``sim/stats.py``).

Time: a run of known duration starts its sim clock at ``now - speed * duration`` so that sim
time ends at wall "now" (never beyond the dataflow's future-skew limit); the launch catalog is
stamped a year before now so every later upsert (sim time) is newer. See ``sim/clock.py``.
The scorer stamps impressions with WALL time; the sim's events carry SIM time. Until the
scorer takes the request's event time (the simulator already sends it as gRPC metadata
``x-recsys-event-time-ms``), the label join cannot attribute sim clicks to impressions when
``speed != 1``: use ``--speed 1`` for label-join / training-data runs.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from core import kafka
from core.settings import Settings
from proto import events_pb2, recommend_pb2, recommend_pb2_grpc
from sim.clock import SimClock, plan_start, skew_horizon_s
from sim.config import WorldConfig, load_config
from sim.shop import RecommendError, Served, Shop, context, item_upsert, user_profile
from sim.stats import Stats
from sim.world import User, World

log = logging.getLogger(__name__)
YEAR_MS = 365 * 86_400_000
TIME_METADATA = "x-recsys-event-time-ms"


class GrpcRecommender:
    """The frontend's call: Recommend(user, surface=home, k) with the sim time as metadata."""

    def __init__(self, address: str, timeout_s: float, explain_share: float = 0.0) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = recommend_pb2_grpc.RecommendServiceStub(self.channel)
        self.timeout_s = timeout_s
        self.explain_share = explain_share
        self._calls = itertools.count()

    def _explain(self) -> bool:
        """Every 1/share-th call, deterministically (thread-safe: ``count`` is atomic)."""
        n = next(self._calls)
        return math.floor((n + 1) * self.explain_share) > math.floor(n * self.explain_share)

    def __call__(self, user: User, k: int, sim_ms: int) -> Served:
        device, country = context(user)
        req = recommend_pb2.RecommendRequest(
            user_id=user.user_id, surface="home", k=k,
            context=events_pb2.Context(device=device, surface="home", country=country),
            explain=self._explain())
        t0 = time.perf_counter()
        try:
            resp = self.stub.Recommend(req, timeout=self.timeout_s, metadata=((TIME_METADATA, str(sim_ms)),))
        except grpc.RpcError as exc:
            raise RecommendError(exc.code().name if hasattr(exc, "code") else "UNKNOWN") from exc
        return Served(resp.request_id, [i.item_id for i in resp.items], resp.arm or "default",
                      resp.degraded, (time.perf_counter() - t0) * 1000.0,
                      ["covisit" if "covisit" in i.sources else (i.sources[0] if i.sources else "none")
                       for i in resp.items],
                      [(c.item_id, list(c.sources), c.model_rank) for c in resp.candidates] or None)


class KafkaSink:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.producer = kafka.producer(settings)
        self._n = 0

    def _produce(self, topic: str, key: str, value: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.s.topic(topic), key=key.encode(), value=value)
                break
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.1)
        self._n += 1
        if self._n % 200 == 0:
            self.producer.poll(0)

    def event(self, user_id: str, value: bytes) -> None:
        self._produce("clickstream", user_id, value)

    def catalog(self, item_id: str, value: bytes) -> None:
        self._produce("catalog", item_id, value)

    def profile(self, user_id: str, value: bytes) -> None:
        self._produce("users", user_id, value)

    def flush(self, timeout_s: float = 10.0) -> int:
        return int(self.producer.flush(timeout_s))


class Simulator:
    def __init__(self, settings: Settings, address: str, k: int | None = None,
                 config: WorldConfig | None = None) -> None:
        self.s = settings
        cfg = config or load_config(settings)
        self.cfg = cfg.with_(run={"k": k}) if k else cfg
        self.k = self.cfg.run.k
        self.world = World(config=self.cfg)
        self.sink = KafkaSink(settings)
        self.recommender = GrpcRecommender(address, self.cfg.run.rpc_timeout_s,
                                           self.cfg.run.explain_share)
        self.launch_ms = int(time.time() * 1000) - YEAR_MS
        self.shop: Shop | None = None
        self.clock: SimClock | None = None
        self.rate = 0.0
        self.wall_s = 0.0
        self.finished_ms: int | None = None

    def publish_catalog(self) -> int:
        """The launch catalog and user profiles, stamped a year ago (older than any sim time)."""
        for it in self.world.items:
            self.sink.catalog(it.item_id, item_upsert(it, self.launch_ms))
        for u in self.world.users:
            self.sink.profile(u.user_id, user_profile(u, self.launch_ms))
        self.sink.flush(30)
        return len(self.world.items)

    def run(self, rate: float, duration_s: float, stop: threading.Event | None = None,
            workers: int | None = None) -> Stats:
        stop = stop or threading.Event()
        speed = self.cfg.run.speed
        start = plan_start(duration_s, speed, end_hour_utc=self.cfg.run.end_hour_utc)
        if start <= self.launch_ms:
            raise ValueError(f"speed {speed} x duration {duration_s}s reaches back more than a year "
                             "(before the launch catalog): shorten the run or lower the speed")
        clock = SimClock(speed, start)
        if duration_s <= 0 and speed > 1:
            log.warning("open-ended run at %gx starting at now: events pass the dataflow's future "
                        "limit (max_event_skew_s=%gs) after %.0f wall seconds", speed,
                        self.s.max_event_skew_s, skew_horizon_s(speed, start, self.s.max_event_skew_s))
        self.clock, self.rate = clock, rate
        self.shop = Shop(self.world, self.cfg, self.sink, self.recommender, clock, rate,
                         run_id=format(start // 1000 % 36**4, "x"))
        end = start + speed * duration_s * 1000 if duration_s > 0 else float("inf")
        t0 = time.monotonic()
        with ThreadPoolExecutor(workers or self.cfg.run.workers, thread_name_prefix="shopper") as pool:
            self.shop.run(end, stop, pool)
        self.finished_ms = min(clock.now_ms(), int(end)) if duration_s > 0 else clock.now_ms()
        self.wall_s = time.monotonic() - t0
        left = self.sink.flush(10)
        if left:
            log.warning("%d messages still undelivered after the final flush", left)
        return self.shop.stats

    def report(self) -> dict[str, Any]:
        shop, clock = self.shop, self.clock
        if shop is None or clock is None:
            return {**Stats().report(), "sim_hours": 0.0}
        with shop.lock:
            rep = shop.stats.report()
            pending = shop.pending_purchases
        now = self.finished_ms or clock.now_ms()
        rep["learning_curve"].update(start_ms=clock.start_ms, end_ms=now, warmup_s=self.cfg.run.warmup_s)
        return {
            **rep,
            "sim_hours": (now - clock.start_ms) / 3_600_000, "sim_start_ms": clock.start_ms,
            "sim_now_ms": now, "speed": clock.speed, "rate": self.rate,
            "warmup_s": self.cfg.run.warmup_s, "k": self.k, "seed": self.cfg.catalog.seed,
            "oracle_share": self.cfg.run.oracle_share, "purchases_pending": pending,
            "world": {"items": len(self.world.items), "active_items": len(self.world.active_items()),
                      "users": len(self.world.users),
                      "bots": sum(1 for u in self.world.users if u.bot),
                      "drifting": sum(1 for u in self.world.users if u.drift_to is not None)},
        }
