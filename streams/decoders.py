"""Kafka message -> dataflow record, for every input topic. Never raises: bad input becomes a
``Rejected`` (reason + original bytes) that the dataflow sends to the dead-letter topic."""

from __future__ import annotations

from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from google.protobuf.message import DecodeError

from proto import events_pb2
from streams import metrics
from streams.events import Ev, Rejected, dead_letter_bytes, parse
from streams.steps import CatalogRow, ProfileRow, Touch


def _meta(msg: KafkaSourceMessage[Any, Any]) -> tuple[str, int, int, int]:
    """(topic, partition, offset, ingest_ms) of a consumed message; records progress."""
    topic, part = msg.topic or "", msg.partition if msg.partition is not None else -1
    offset = msg.offset if msg.offset is not None else -1
    ts_type, ts = msg.timestamp or (0, 0)
    metrics.EVENTS_IN.labels(topic).inc()
    metrics.record_offset(topic, part, offset)
    return topic, part, offset, ts if ts_type else 0


def _kafka_error(msg: Any) -> Rejected:
    """A consume error surfaced as an item (raise_on_errors=False)."""
    return Rejected(f"kafka error: {getattr(msg, 'err', msg)}", b"", "", -1, -1, stage="consume")


def decode_clickstream(msg: Any, max_skew_ms: int) -> Ev | Rejected:
    if not isinstance(msg, KafkaSourceMessage):
        return _kafka_error(msg)
    topic, part, offset, ingest_ms = _meta(msg)
    out = parse(msg.value, topic=topic, partition=part, offset=offset, ingest_ms=ingest_ms,
                max_skew_ms=max_skew_ms)
    if isinstance(out, Ev):
        metrics.EVENTS_OK.inc()
    return out


def decode_catalog(msg: Any) -> CatalogRow | Rejected:
    if not isinstance(msg, KafkaSourceMessage):
        return _kafka_error(msg)
    topic, part, offset, ingest_ms = _meta(msg)
    raw = msg.value or b""
    item = events_pb2.ItemUpsert()
    try:
        item.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        return Rejected(f"undecodable ItemUpsert: {exc}", raw, topic, part, offset, "decode_catalog")
    if not item.item_id or item.price < 0 or item.price != item.price:
        reason = "missing item_id" if not item.item_id else f"invalid price {item.price}"
        return Rejected(reason, raw, topic, part, offset, "decode_catalog")
    return CatalogRow(item.item_id, item.title, item.category, item.brand, item.price, item.rating,
                      item.active, item.updated_ms, ingest_ms)


def decode_profile(msg: Any) -> ProfileRow | Rejected:
    if not isinstance(msg, KafkaSourceMessage):
        return _kafka_error(msg)
    topic, part, offset, ingest_ms = _meta(msg)
    raw = msg.value or b""
    prof = events_pb2.UserProfile()
    try:
        prof.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        return Rejected(f"undecodable UserProfile: {exc}", raw, topic, part, offset, "decode_profile")
    if not prof.user_id:
        return Rejected("missing user_id", raw, topic, part, offset, "decode_profile")
    return ProfileRow(prof.user_id, prof.country, prof.age_bucket, prof.signup_ms, prof.updated_ms,
                      ingest_ms)


def decode_impressions(msg: Any) -> list[Touch | Rejected]:
    """One impression ``Touch`` per served item (counts for CTR); degraded answers count too."""
    if not isinstance(msg, KafkaSourceMessage):
        return [_kafka_error(msg)]
    topic, part, offset, ingest_ms = _meta(msg)
    raw = msg.value or b""
    imp = events_pb2.Impression()
    try:
        imp.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        return [Rejected(f"undecodable Impression: {exc}", raw, topic, part, offset,
                         "decode_impressions")]
    if not imp.request_id or imp.event_time_ms <= 0:
        return [Rejected("impression without request_id or time", raw, topic, part, offset,
                         "decode_impressions")]
    return [Touch(it.item_id, "", "impression", imp.event_time_ms, 1, 0.0, ingest_ms)
            for it in imp.items if it.item_id]


def to_dead_letter(rej: Rejected) -> KafkaSinkMessage[bytes | None, bytes | None]:
    metrics.DLQ.labels(rej.reason.split(":")[0][:60]).inc()
    return KafkaSinkMessage(key=rej.topic.encode(), value=dead_letter_bytes(rej))
