"""Kafka message -> dataflow record, for every input topic. Never raises: bad input becomes a
``Rejected`` (reason + original bytes) that the dataflow sends to the dead-letter topic."""

from __future__ import annotations

import time
from typing import Any

from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSourceMessage

from features import record_decoding as RD
from features.events import Ev, Rejected, dead_letter_bytes, parse
from features.record_decoding import Origin
from features.state_updates import CatalogRow, ProfileRow, Touch
from streams import flow_metrics as metrics


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


def _origin(msg: Any) -> Origin | Rejected:
    if not isinstance(msg, KafkaSourceMessage):
        return _kafka_error(msg)
    return Origin(*_meta(msg))


def decode_catalog(msg: Any) -> CatalogRow | Rejected:
    o = _origin(msg)
    return o if isinstance(o, Rejected) else RD.catalog_row(msg.value or b"", o)


def decode_profile(msg: Any) -> ProfileRow | Rejected:
    o = _origin(msg)
    return o if isinstance(o, Rejected) else RD.profile_row(msg.value or b"", o)


def decode_impressions(msg: Any) -> list[Touch | Rejected]:
    """One impression ``Touch`` per served item (counts for CTR); degraded answers count too."""
    o = _origin(msg)
    return [o] if isinstance(o, Rejected) else RD.impression_touches(msg.value or b"", o)


def to_dead_letter(rej: Rejected) -> KafkaSinkMessage[bytes | None, bytes | None]:
    metrics.DLQ.labels(rej.reason.split(":")[0][:60]).inc()
    return KafkaSinkMessage(key=rej.topic.encode(), value=dead_letter_bytes(rej))
