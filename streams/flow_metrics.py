"""Prometheus metrics of the dataflows, and the consumer-lag monitor.

Lag per partition = high watermark - next offset to process (what ops watch first).
Processed offsets are recorded by the decode step in this process; the monitor thread
compares them with the broker's high watermarks once a second.
"""

from __future__ import annotations

import logging
import threading
import time

from prometheus_client import Counter, Gauge, Histogram

from core import kafka
from core.settings import Settings

log = logging.getLogger(__name__)

EVENTS_IN = Counter("recsys_stream_events_in_total", "events read from Kafka", ["topic"])
EVENTS_OK = Counter("recsys_stream_events_valid_total", "valid events entering the dataflow")
DLQ = Counter("recsys_stream_dead_letters_total", "events sent to the dead-letter topic",
              ["reason"])
WRITES = Counter("recsys_stream_state_writes_total", "state writes to Redis", ["kind"])
LAG = Gauge("recsys_stream_consumer_lag", "high watermark - next offset", ["topic", "partition"])
FRESHNESS = Histogram(
    "recsys_stream_freshness_seconds",
    "event ingest (Kafka timestamp) -> Redis write",
    buckets=(0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5,
             0.75, 1, 2, 5, 10, 30, 60),
)
STATE_KEYS = Gauge("recsys_stream_state_keys", "keys held in keyed state by this process", ["state"])

_processed: dict[tuple[str, int], int] = {}
_lock = threading.Lock()


def record_offset(topic: str, partition: int, offset: int) -> None:
    with _lock:
        key = (topic, partition)
        if offset + 1 > _processed.get(key, -1):
            _processed[key] = offset + 1


def processed_offsets() -> dict[tuple[str, int], int]:
    with _lock:
        return dict(_processed)


class LagMonitor(threading.Thread):
    """Sets ``recsys_stream_consumer_lag`` for the partitions this process consumes."""

    def __init__(self, settings: Settings, topics: list[str], interval_s: float = 1.0) -> None:
        super().__init__(name="lag-monitor", daemon=True)
        self.settings = settings
        self.topics = topics
        self.interval_s = interval_s
        self._stop_evt = threading.Event()

    def run(self) -> None:
        client = kafka.consumer(self.settings, group="recsys-lag-monitor")
        try:
            while not self._stop_evt.wait(self.interval_s):
                try:
                    self.poll_once(client)
                except Exception as exc:  # noqa: BLE001 - monitoring must never kill the flow
                    log.warning("lag monitor: %s", exc)
        finally:
            client.close()

    def poll_once(self, client: object) -> None:
        done = processed_offsets()
        for topic in self.topics:
            for part, high in kafka.high_watermarks(client, topic).items():  # type: ignore[arg-type]
                nxt = done.get((topic, part))
                if nxt is None:
                    nxt = 0 if high > 0 and not done else None  # type: ignore[assignment]
                if nxt is not None:
                    LAG.labels(topic, str(part)).set(max(high - nxt, 0))

    def stop(self) -> None:
        self._stop_evt.set()


def observe_freshness_many(ingest_ms: list[int]) -> None:
    now = time.time() * 1000
    for t in ingest_ms:
        if t > 0:
            FRESHNESS.observe(max(now - t, 0.0) / 1000.0)
