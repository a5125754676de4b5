"""Closed-loop shoppers: browse (views to Kafka), open the homepage (Recommend over gRPC, the
simulator is the frontend), react by the hidden truth (clicks / carts / purchases to Kafka).

Visits arrive as a Poisson process at ``rate`` shoppers/s and run on a thread pool, so a slow
scorer cannot slow the arrival schedule (open loop for arrivals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
from prometheus_client import Counter, Histogram

from proto import events_pb2, recommend_pb2, recommend_pb2_grpc
from recsys import kafka
from recsys.settings import Settings
from sim.world import Item, User, World
from streams.events import make_event

log = logging.getLogger(__name__)

EVENTS = Counter("recsys_sim_events_total", "events produced by the simulator", ["type"])
RPC = Histogram("recsys_sim_rpc_seconds", "Recommend latency seen by the simulator",
                buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0))
RPC_ERRORS = Counter("recsys_sim_rpc_errors_total", "failed Recommend calls", ["code"])
SHOWN = Counter("recsys_sim_impressions_total", "items shown to simulated shoppers", ["arm"])
CLICKS = Counter("recsys_sim_clicks_total", "clicks by simulated shoppers", ["arm"])


@dataclass
class ArmStats:
    impressions: int = 0
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0
    best_ctr_sum: float = 0.0
    requests: int = 0


@dataclass
class SimStats:
    events: int = 0
    requests: int = 0
    rpc_errors: int = 0
    degraded: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    arms: dict[str, ArmStats] = field(default_factory=lambda: defaultdict(ArmStats))


class Simulator:
    def __init__(self, settings: Settings, address: str, k: int = 10) -> None:
        self.s = settings
        self.k = k
        self.world = World(seed=settings.sim_seed, n_users=settings.sim_users,
                           n_items=settings.sim_items, n_categories=settings.sim_categories)
        self.producer = kafka.producer(settings)
        self.channel = grpc.insecure_channel(address)
        self.stub = recommend_pb2_grpc.RecommendServiceStub(self.channel)
        self.stats = SimStats()
        self._lock = threading.Lock()
        self._rng_lock = threading.Lock()
        self._seq = 0

    # --- events ----------------------------------------------------------------------------
    def _emit(self, user: User, etype: int, item: Item, **kw: Any) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.stats.events += 1
        value = make_event(event_id=f"sim-{self.s.sim_seed}-{seq}", ts_ms=int(time.time() * 1000),
                           user_id=user.user_id, type=etype, item_id=item.item_id,
                           price=item.price, **kw)
        self.producer.produce(self.s.topic("clickstream"), key=user.user_id.encode(), value=value)
        EVENTS.labels(events_pb2.EventType.Name(etype).lower()).inc()  # type: ignore[arg-type]

    def publish_catalog(self) -> int:
        now = int(time.time() * 1000)
        for it in self.world.items:
            msg = events_pb2.ItemUpsert(item_id=it.item_id, title=f"item {it.item_id}",
                                        category=f"c{it.category}", brand=f"b{it.brand}",
                                        price=it.price, rating=3.0 + it.quality / 2, active=True,
                                        updated_ms=now)
            self.producer.produce(self.s.topic("catalog"), key=it.item_id.encode(),
                                  value=msg.SerializeToString())
        self.producer.flush(30)
        return len(self.world.items)

    # --- one shopper visit -----------------------------------------------------------------
    def visit(self) -> None:
        with self._rng_lock:
            user = self.world.pick_user()
            n_views = int(self.world.rng.geometric(0.35))
            views = self.world.browse(user, n_views)
            coins = self.world.rng.random(3 * self.k)
        for it in views:
            self._emit(user, events_pb2.VIEW, it)
        self._homepage(user, coins)
        self.producer.poll(0)

    def _homepage(self, user: User, coins: np.ndarray) -> None:
        t0 = time.perf_counter()
        try:
            resp = self.stub.Recommend(recommend_pb2.RecommendRequest(
                user_id=user.user_id, surface="home", k=self.k), timeout=1.0)
        except grpc.RpcError as exc:
            RPC_ERRORS.labels(exc.code().name).inc()
            with self._lock:
                self.stats.rpc_errors += 1
                self.stats.requests += 1
            return
        ms = (time.perf_counter() - t0) * 1000
        RPC.observe(ms / 1000)
        arm = resp.arm or "default"
        shown = [(pos, self.world.index.get(si.item_id)) for pos, si in enumerate(resp.items)]
        outcomes = []
        for pos, it in shown:
            if it is None:
                continue
            clicked = coins[pos] < self.world.p_click(user, it, pos)
            carted = clicked and coins[self.k + pos] < 0.25
            bought = carted and coins[2 * self.k + pos] < 0.4
            outcomes.append((pos, it, clicked, carted, bought))
        for pos, it, clicked, carted, bought in outcomes:
            if clicked:
                self._emit(user, events_pb2.CLICK, it, request_id=resp.request_id, position=pos)
            if carted:
                self._emit(user, events_pb2.ADD_TO_CART, it, request_id=resp.request_id,
                           position=pos, quantity=1)
            if bought:
                self._emit(user, events_pb2.PURCHASE, it, request_id=resp.request_id,
                           position=pos, quantity=1)
        SHOWN.labels(arm).inc(len(outcomes))
        CLICKS.labels(arm).inc(sum(1 for o in outcomes if o[2]))
        with self._lock:
            st = self.stats
            st.requests += 1
            st.latencies_ms.append(ms)
            st.degraded += int(resp.degraded)
            a = st.arms[arm]
            a.requests += 1
            a.impressions += len(outcomes)
            a.clicks += sum(1 for o in outcomes if o[2])
            a.carts += sum(1 for o in outcomes if o[3])
            a.purchases += sum(1 for o in outcomes if o[4])
            a.revenue += sum(o[1].price for o in outcomes if o[4])

    # --- main loop -------------------------------------------------------------------------
    def run(self, rate: float, duration_s: float, stop: threading.Event | None = None,
            workers: int = 8) -> SimStats:
        stop = stop or threading.Event()
        rng = np.random.default_rng(self.s.sim_seed + 1)
        t_end = time.monotonic() + duration_s if duration_s > 0 else float("inf")
        next_t = time.monotonic()
        with ThreadPoolExecutor(workers, thread_name_prefix="shopper") as pool:
            while not stop.is_set() and time.monotonic() < t_end:
                next_t += float(rng.exponential(1.0 / rate))
                delay = next_t - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                pool.submit(self._safe_visit)
        self.producer.flush(10)
        return self.stats

    def _safe_visit(self) -> None:
        try:
            self.visit()
        except Exception:  # one broken visit must not stop the shop
            log.exception("shopper visit failed")

    def report(self) -> dict[str, Any]:
        st = self.stats
        lat = np.array(st.latencies_ms) if st.latencies_ms else np.array([0.0])
        imps = sum(a.impressions for a in st.arms.values())
        clicks = sum(a.clicks for a in st.arms.values())
        arms = {}
        for name, a in st.arms.items():
            ctr = a.clicks / a.impressions if a.impressions else 0.0
            half = 1.96 * (ctr * (1 - ctr) / a.impressions) ** 0.5 if a.impressions else 0.0
            arms[name] = {
                "impressions": a.impressions, "ctr": ctr, "ctr_ci95": [ctr - half, ctr + half],
                "cart_rate": a.carts / a.impressions if a.impressions else 0.0,
                "cvr": a.purchases / a.clicks if a.clicks else 0.0,
                "revenue_per_mille": 1000 * a.revenue / a.impressions if a.impressions else 0.0,
            }
        return {
            "events": st.events, "requests": st.requests, "rpc_errors": st.rpc_errors,
            "degraded": st.degraded, "rpc_p50_ms": float(np.percentile(lat, 50)),
            "rpc_p99_ms": float(np.percentile(lat, 99)), "impressions": imps, "clicks": clicks,
            "ctr": clicks / imps if imps else 0.0, "arms": arms,
        }
