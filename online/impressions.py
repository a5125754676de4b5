"""Logs what was served to Kafka asynchronously: never on the latency path.

``produce`` only enqueues (librdkafka sends in its own thread); a poll thread serves the
delivery callbacks, which librdkafka raises for failed messages only
(``delivery.report.only.error``: a Python call per delivered impression cost ~1.5% of a
scorer's CPU under load). When Kafka is down or the queue is full, impressions are dropped
and counted (``recsys_serve_impressions_dropped_total``); the request still succeeds.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaException

from core import kafka
from core.settings import Settings
from online import scorer_metrics as metrics
from proto import events_pb2

log = logging.getLogger(__name__)


class ImpressionLogger:
    def __init__(self, settings: Settings, timeout_ms: int = 30_000, linger_ms: int = 100) -> None:
        self.topic = settings.topic("impressions")
        self._producer = kafka.producer(settings, **{"queue.buffering.max.messages": 100_000,
                                                     "message.timeout.ms": timeout_ms,
                                                     "delivery.report.only.error": True,
                                                     "linger.ms": linger_ms})
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="impressions", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def _on_delivery(self, err: object, _msg: object) -> None:
        if err is not None:
            metrics.IMPRESSIONS_DROPPED.inc()

    def log(self, imp: events_pb2.Impression) -> None:
        try:
            self._producer.produce(self.topic, key=imp.user_id.encode(),
                                   value=imp.SerializeToString(), on_delivery=self._on_delivery)
        except (BufferError, KafkaException) as exc:
            metrics.IMPRESSIONS_DROPPED.inc()
            log.debug("impression dropped: %s", exc)

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._producer.flush(timeout)
