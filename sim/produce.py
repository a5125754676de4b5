"""Synthetic clickstream at a target rate: protobuf ``Event``s to the clickstream topic.

Events follow a fixed schedule (event ``n`` is due at ``t0 + n / rate``), so the achieved
rate does not drift when a send is slow: late events are sent at once to catch up. Users
``u0..u{U-1}`` (activity long-tailed), items ``i0..i{I-1}`` (Zipf-like popularity, a fixed
price per item), types mostly VIEW with some CLICK / ADD_TO_CART / PURCHASE, a context
(device, surface, country). Content is seeded; ``event_id`` is unique per run
(``<run id>-<n>``), the Kafka key is the user id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from core import kafka
from core.settings import Settings
from proto import events_pb2

TYPE_MIX = (  # (type, probability)
    (events_pb2.VIEW, 0.86),
    (events_pb2.CLICK, 0.09),
    (events_pb2.ADD_TO_CART, 0.04),
    (events_pb2.PURCHASE, 0.01),
)
DEVICES = (("web", 0.5), ("ios", 0.3), ("android", 0.2))
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP")
BATCH = 512


class ProduceError(RuntimeError):
    """The producer cannot run (Kafka unreachable, bad parameters)."""


class EventFactory:
    """Seeded synthetic events, generated in vectorised batches."""

    def __init__(self, users: int, items: int, surfaces: tuple[str, ...], seed: int) -> None:
        if users < 1 or items < 1:
            raise ProduceError(f"need users >= 1 and items >= 1, got {users}, {items}")
        self.rng = np.random.default_rng(seed)
        act = self.rng.pareto(2.0, size=users) + 0.2
        self.user_p = act / act.sum()
        pop = 1.0 / np.arange(1, items + 1) ** 0.9
        self.rng.shuffle(pop)
        self.item_p = pop / pop.sum()
        self.prices = np.round(np.exp(self.rng.normal(3.5, 0.8, size=items)), 2)
        self.user_ids = [f"u{j}" for j in range(users)]
        self.item_ids = [f"i{j}" for j in range(items)]
        self.surfaces = surfaces
        self.countries = [COUNTRIES[j % len(COUNTRIES)] for j in range(users)]
        self.types = np.array([t for t, _ in TYPE_MIX])
        self.type_p = np.array([p for _, p in TYPE_MIX])
        self.devices = [d for d, _ in DEVICES]
        self.device_p = np.array([p for _, p in DEVICES])

    def draws(self, n: int) -> list[tuple[int, int, int, int, int, int]]:
        """``n`` random (user, item, type, device, surface, quantity) index tuples."""
        rng = self.rng
        cols = (
            rng.choice(len(self.user_ids), size=n, p=self.user_p),
            rng.choice(len(self.item_ids), size=n, p=self.item_p),
            rng.choice(self.types, size=n, p=self.type_p),
            rng.choice(len(self.devices), size=n, p=self.device_p),
            rng.integers(0, len(self.surfaces), size=n),
            rng.integers(1, 4, size=n),
        )
        return list(zip(*(c.tolist() for c in cols), strict=True))

    def encode(
        self, draw: tuple[int, int, int, int, int, int], event_id: str, now_ms: int
    ) -> tuple[str, bytes]:
        """(Kafka key, serialised ``Event``) for one draw."""
        u, it, typ, dv, sf, qty = draw
        user_id = self.user_ids[u]
        ev = events_pb2.Event(
            event_id=event_id,
            event_time_ms=now_ms,
            user_id=user_id,
            type=typ,  # type: ignore[arg-type]
            item_id=self.item_ids[it],
            price=float(self.prices[it]),
            quantity=qty if typ in (events_pb2.ADD_TO_CART, events_pb2.PURCHASE) else 0,
            context=events_pb2.Context(device=self.devices[dv], surface=self.surfaces[sf],
                                       country=self.countries[u]),
        )
        return user_id, ev.SerializeToString()


@dataclass(kw_only=True)
class DeliveryStats:
    """Delivery accounting shared by every producer loop (produce, replay)."""

    delivered: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            self.errors[err.name()] = self.errors.get(err.name(), 0) + 1

    def flush(self, prod: Producer, timeout_s: float) -> None:
        """Wait for outstanding deliveries; count what is still undelivered at exit."""
        left = prod.flush(timeout_s)
        if left:
            self.errors["NOT_DELIVERED_AT_EXIT"] = left


@dataclass
class ProduceStats(DeliveryStats):
    target_rate: float
    produced: int = 0
    elapsed_s: float = 0.0  # start .. last send (schedule time)
    flush_s: float = 0.0

    @property
    def rate(self) -> float:
        """Events per second over the schedule: ``produced / (last send - t0 + 1/rate)``."""
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "target_rate": self.target_rate,
            "rate": round(self.rate, 2),
            "rate_error_pct": round(100.0 * (self.rate / self.target_rate - 1.0), 2),
            "produced": self.produced,
            "delivered": self.delivered,
            "failed": self.failed,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "flush_s": round(self.flush_s, 3),
        }


def connect(settings: Settings, topic: str, timeout_s: float = 5.0) -> Producer:
    """A producer for ``topic`` (created if missing), or a clear error if Kafka is down."""
    bootstrap = settings.kafka_config()["bootstrap.servers"]
    probe = kafka.producer(settings, log_level=0)  # quiet: we report the failure ourselves
    try:
        probe.list_topics(timeout=timeout_s)
        kafka.ensure_topics(settings, [topic])
    except (KafkaException, RuntimeError, OSError) as exc:
        raise ProduceError(f"cannot reach Kafka at {bootstrap} (is the broker running?): "
                           f"{exc}") from None
    finally:
        probe.flush(0)
    return kafka.producer(settings, **{"queue.buffering.max.messages": 1_000_000})


StatusFn = Callable[[ProduceStats, float], None]


def produce(
    settings: Settings,
    rate: float,
    *,
    duration_s: float | None = None,
    count: int | None = None,
    users: int | None = None,
    items: int | None = None,
    seed: int | None = None,
    status: StatusFn | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    flush_timeout_s: float = 30.0,
) -> ProduceStats:
    """Produce events at ``rate``/s until ``count`` events or ``duration_s`` seconds (the
    first reached; neither: until ``should_stop()``), then flush. ``status(stats, t)`` is
    called about once a second."""
    if rate <= 0:
        raise ProduceError(f"rate must be > 0, got {rate}")
    if (count is not None and count < 0) or (duration_s is not None and duration_s <= 0):
        raise ProduceError(f"need count >= 0 and duration > 0, got {count}, {duration_s}")
    total = count
    if duration_s is not None:
        by_time = round(rate * duration_s)
        total = by_time if total is None else min(total, by_time)
    factory = EventFactory(users or settings.sim_users, items or settings.sim_items,
                           settings.surfaces, settings.sim_seed if seed is None else seed)
    topic = settings.topic("clickstream")
    prod = connect(settings, topic)
    stats = ProduceStats(rate)

    run_id = uuid.uuid4().hex[:12]
    interval = 1.0 / rate
    n = 0
    t0 = time.monotonic()
    next_status = t0 + 1.0
    pending: list[tuple[int, int, int, int, int, int]] = []
    while (total is None or n < total) and not should_stop():
        now = time.monotonic()
        due = int((now - t0) * rate) + 1
        if total is not None:
            due = min(due, total)
        now_ms = int(time.time() * 1000)
        while n < due:
            if not pending:
                pending = factory.draws(BATCH)[::-1]
            key, value = factory.encode(pending[-1], f"{run_id}-{n}", now_ms)
            try:
                prod.produce(topic, value, key.encode(), on_delivery=stats.on_delivery)
            except BufferError:  # local queue full: let librdkafka drain, then retry
                prod.poll(0.05)
                continue
            pending.pop()
            n += 1
        stats.produced = n
        stats.elapsed_s = time.monotonic() - t0 + interval if n else 0.0
        prod.poll(0)
        if status is not None and now >= next_status:
            status(stats, now - t0)
            next_status += 1.0
        wait = t0 + n * interval - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, 0.05))
    t_flush = time.monotonic()
    stats.flush(prod, flush_timeout_s)
    stats.flush_s = time.monotonic() - t_flush
    return stats
