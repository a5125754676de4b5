"""Kafka message -> dataflow record, for every input topic. Never raises: bad input becomes a
``Rejected`` (reason + original bytes) that the dataflow sends to the dead-letter topic."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage
from google.protobuf.message import DecodeError, Message

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


def decode_clickstream_batch(msgs: list[Any], max_skew_ms: int) -> list[Ev | Rejected]:
    """``decode_clickstream`` over a batch, with the metrics (events in, valid events, processed
    offsets) recorded once per batch instead of once per message."""
    out: list[Ev | Rejected] = []
    seen: dict[tuple[str, int], tuple[int, int]] = {}  # (topic, partition) -> (count, last offset)
    now_ms = int(time.time() * 1000)
    for msg in msgs:
        if not isinstance(msg, KafkaSourceMessage):
            out.append(_kafka_error(msg))
            continue
        topic, part = msg.topic or "", msg.partition if msg.partition is not None else -1
        offset = msg.offset if msg.offset is not None else -1
        ts_type, ts = msg.timestamp or (0, 0)
        n, last = seen.get((topic, part), (0, -1))
        seen[(topic, part)] = (n + 1, max(last, offset))
        out.append(parse(msg.value, topic=topic, partition=part, offset=offset,
                         ingest_ms=ts if ts_type else 0, max_skew_ms=max_skew_ms, now_ms=now_ms))
    for (topic, part), (n, last) in seen.items():
        metrics.EVENTS_IN.labels(topic).inc(n)
        metrics.record_offset(topic, part, last)
    metrics.EVENTS_OK.inc(sum(1 for e in out if isinstance(e, Ev)))
    return out


M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Parsed(Generic[M]):
    """A decoded protobuf value with where it came from (for a dead letter if it is invalid)."""

    value: M
    raw: bytes
    topic: str
    partition: int
    offset: int
    ingest_ms: int

    def reject(self, reason: str, stage: str) -> Rejected:
        return Rejected(reason, self.raw, self.topic, self.partition, self.offset, stage)


def _parse(msg: Any, cls: type[M], stage: str) -> Parsed[M] | Rejected:
    """Kafka message -> protobuf ``cls``, or the ``Rejected`` a dead letter is made of."""
    if not isinstance(msg, KafkaSourceMessage):
        return _kafka_error(msg)
    topic, part, offset, ingest_ms = _meta(msg)
    raw = msg.value or b""
    value = cls()
    try:
        value.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        return Rejected(f"undecodable {cls.__name__}: {exc}", raw, topic, part, offset, stage)
    return Parsed(value, raw, topic, part, offset, ingest_ms)


def decode_catalog(msg: Any) -> CatalogRow | Rejected:
    p = _parse(msg, events_pb2.ItemUpsert, "decode_catalog")
    if isinstance(p, Rejected):
        return p
    item = p.value
    if not item.item_id or item.price < 0 or item.price != item.price:
        reason = "missing item_id" if not item.item_id else f"invalid price {item.price}"
        return p.reject(reason, "decode_catalog")
    return CatalogRow(item.item_id, item.title, item.category, item.brand, item.price, item.rating,
                      item.active, item.updated_ms, p.ingest_ms)


def decode_profile(msg: Any) -> ProfileRow | Rejected:
    p = _parse(msg, events_pb2.UserProfile, "decode_profile")
    if isinstance(p, Rejected):
        return p
    prof = p.value
    if not prof.user_id:
        return p.reject("missing user_id", "decode_profile")
    return ProfileRow(prof.user_id, prof.country, prof.age_bucket, prof.signup_ms, prof.updated_ms,
                      p.ingest_ms)


def decode_impressions(msg: Any) -> list[Touch | Rejected]:
    """One impression ``Touch`` per served item (counts for CTR); degraded answers count too."""
    p = _parse(msg, events_pb2.Impression, "decode_impressions")
    if isinstance(p, Rejected):
        return [p]
    imp = p.value
    if not imp.request_id or imp.event_time_ms <= 0:
        return [p.reject("impression without request_id or time", "decode_impressions")]
    return [Touch(it.item_id, "", "impression", imp.event_time_ms, 1, 0.0, p.ingest_ms)
            for it in imp.items if it.item_id]


def to_dead_letter(rej: Rejected) -> KafkaSinkMessage[bytes | None, bytes | None]:
    metrics.DLQ.labels(rej.reason.split(":")[0][:60]).inc()
    return KafkaSinkMessage(key=rej.topic.encode(), value=dead_letter_bytes(rej))
