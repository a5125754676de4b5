"""Kafka client helpers shared by every component (the only place clients are configured)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from core.settings import BROKER_FILE, Settings, published, resolve_kafka_bootstrap


def producer(settings: Settings, **extra: Any) -> Producer:
    conf = settings.kafka_config()
    conf.update({"linger.ms": 5, "enable.idempotence": False, "compression.type": "none"})
    conf.update(extra)
    return Producer(conf)


def consumer(settings: Settings, group: str, **extra: Any) -> Consumer:
    conf = settings.kafka_config()
    conf.update({"group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    conf.update(extra)
    return Consumer(conf)


def ensure_topics(settings: Settings, topics: list[str], partitions: int | None = None) -> None:
    """Create topics if missing: via the embedded broker's control API, else the Admin API."""
    parts = partitions or settings.partitions
    bootstrap = resolve_kafka_bootstrap(settings)
    info = published(settings, BROKER_FILE)
    if info and info.get("bootstrap") == bootstrap and info.get("control_url"):
        body = json.dumps({"topics": [{"name": t, "partitions": parts} for t in topics]}).encode()
        req = urllib.request.Request(
            f"{info['control_url']}/topics", data=body, method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            if resp.status != 200:
                raise RuntimeError(f"embedded broker refused topics {topics}: {resp.read()!r}")
        return
    admin = AdminClient(settings.kafka_config())
    existing = set(admin.list_topics(timeout=10).topics)
    missing = [NewTopic(t, parts, 1) for t in topics if t not in existing]
    if not missing:
        return
    for topic, fut in admin.create_topics(missing, operation_timeout=10).items():
        try:
            fut.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise RuntimeError(f"creating topic {topic}: {exc}") from exc


def watermarks(client: Consumer, topic: str, timeout: float = 5.0) -> dict[int, tuple[int, int]]:
    """partition -> (low, high) watermarks: the oldest offset still kept, the next to be written."""
    md = client.list_topics(topic, timeout=timeout)
    tmeta = md.topics.get(topic)
    if tmeta is None or tmeta.error is not None:
        return {}
    out = {}
    for p in tmeta.partitions:
        low, high = client.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)
        out[p] = (int(low), int(high))
    return out


def high_watermarks(client: Consumer, topic: str, timeout: float = 5.0) -> dict[int, int]:
    """partition -> high watermark (next offset to be written)."""
    return {p: high for p, (_low, high) in watermarks(client, topic, timeout).items()}


def read_range(client: Consumer, topic: str, start: Mapping[int, int], ends: Mapping[int, int],
               timeout_s: float, *, strict: bool = False) -> Iterator[tuple[int, int, bytes | None]]:
    """(partition, offset, value) of every record of ``topic`` from ``start[p]`` up to
    ``ends[p]`` (exclusive), partitions assigned directly (no consumer group to join). At the
    deadline it stops, or with ``strict`` raises TimeoutError naming the partitions short of
    their end."""
    todo = {p: o for p, o in start.items() if o < ends.get(p, 0)}
    client.assign([TopicPartition(topic, p, o) for p, o in todo.items()])
    deadline = time.monotonic() + timeout_s
    while todo:
        if time.monotonic() > deadline:
            if strict:
                raise TimeoutError(f"{topic}: partitions {sorted(todo)} not read to their end "
                                   f"in {timeout_s:.0f} s")
            return
        msg = client.poll(0.2)
        if msg is None or msg.error():
            continue
        part, offset = msg.partition(), msg.offset()
        if part is None or offset is None or part not in todo:
            continue
        value = msg.value()
        yield part, offset, None if value is None else bytes(value)
        if offset + 1 >= ends[part]:
            del todo[part]
