"""The impression log (``online.impressions``): delivered impressions reach Kafka with no
per-message callback; failed ones are counted as dropped. Real embedded broker."""

from __future__ import annotations

import time

from core import kafka
from online import scorer_metrics as metrics
from online.impressions import ImpressionLogger
from proto import events_pb2
from recsys.embedded.redis_server import free_port


def _dropped() -> float:
    return metrics.IMPRESSIONS_DROPPED._value.get()


def test_impressions_reach_kafka_and_failures_are_counted(settings):
    before = _dropped()
    logger = ImpressionLogger(settings)
    for j in range(3):
        logger.log(events_pb2.Impression(request_id=f"r{j}", user_id="u1"))
    logger.close()
    consumer = kafka.consumer(settings, "impressions-test")
    consumer.subscribe([settings.topic("impressions")])
    got: list[str] = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(events_pb2.Impression.FromString(msg.value()).request_id)
    consumer.close()
    assert sorted(got) == ["r0", "r1", "r2"] and _dropped() == before

    down = settings.replace(kafka_bootstrap=f"127.0.0.1:{free_port()}")  # nothing listens there
    logger = ImpressionLogger(down, timeout_ms=300)
    logger.log(events_pb2.Impression(request_id="lost", user_id="u1"))
    deadline = time.monotonic() + 10
    while _dropped() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    logger.close(timeout=0.5)
    assert _dropped() == before + 1  # the delivery failure was reported, and counted once
