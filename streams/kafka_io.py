"""Kafka sources and sinks for every dataflow, configured in one place from the settings."""

from __future__ import annotations

from typing import Any

from bytewax.connectors.kafka import KafkaSink, KafkaSource

from core.settings import Settings, resolve_kafka_bootstrap


def _client_conf(settings: Settings) -> tuple[list[str], dict[str, Any]]:
    conf = {k: v for k, v in settings.kafka_config().items() if k != "bootstrap.servers"}
    return [resolve_kafka_bootstrap(settings)], conf


def source(settings: Settings, topic: str, tail: bool) -> KafkaSource:
    """A partitioned source of one logical topic; consume errors become items (the flows turn
    them into dead letters) and the broker long-poll is bounded for low latency."""
    brokers, conf = _client_conf(settings)
    return KafkaSource(brokers, [settings.topic(topic)], tail=tail,
                       add_config={**conf, "fetch.wait.max.ms": str(settings.stream_fetch_wait_ms)},
                       batch_size=settings.stream_batch_size, raise_on_errors=False)


def sink(settings: Settings, topic: str) -> KafkaSink:
    brokers, conf = _client_conf(settings)
    return KafkaSink(brokers, settings.topic(topic), add_config=conf)
