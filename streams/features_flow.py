"""The feature dataflow: clickstream + catalog -> live state in Redis.

    clickstream ─► decode_validate ─┬─ errs ─► dead_letter (Kafka)
                                    └─ oks ─► key_by_user ─► sessionize ─┬─ session writes
                                                                         ├─ touches ─► key_by_item ─► stats
                                                                         └─ pairs ─► key_by_src ─► covisit
    catalog     ─► decode_catalog ─┬─ errs ─► dead_letter
                                   └─ oks ─► catalog writes
    all writes ─► redis_state (one pipelined round trip per batch)

Event types on top, pure step functions in the middle (they call ``streams.features``),
wiring at the bottom. State is keyed; Bytewax recovery snapshots it with the input offsets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from google.protobuf.message import DecodeError

from proto import codecs, events_pb2
from proto.keys import Keys
from recsys.settings import Settings, resolve_kafka_bootstrap, resolve_redis_url
from streams import features as F
from streams import metrics
from streams.events import Ev, Rejected, dead_letter_bytes, parse
from streams.redis_sink import RedisSink, Write

# --- event types flowing between steps --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemTouch:
    """An accepted (de-duplicated) event as seen by one item."""

    item_id: str
    etype: str
    ts_ms: int
    quantity: int
    ingest_ms: int


@dataclass(frozen=True, slots=True)
class Pair:
    """A co-visitation: ``src`` was seen near ``dst`` in a session."""

    src: str
    dst: str
    weight: float
    ts_ms: int
    ingest_ms: int


Out = Write | ItemTouch | Pair


# --- pure step functions -----------------------------------------------------------------


@dataclass(frozen=True)
class FlowConfig:
    keys: Keys
    gap_s: float
    last_n: int
    half_life_s: float
    covisit_max: int
    covisit_window: int
    max_skew_ms: int

    @classmethod
    def from_settings(cls, s: Settings) -> FlowConfig:
        return cls(
            keys=Keys(s.redis_prefix), gap_s=s.session_gap_s, last_n=s.last_n_viewed,
            half_life_s=s.popularity_half_life_s, covisit_max=s.covisit_max_per_item,
            covisit_window=s.covisit_window, max_skew_ms=int(s.max_event_skew_s * 1000),
        )


def _meta(msg: KafkaSourceMessage[Any, Any]) -> tuple[str, int, int, int]:
    """(topic, partition, offset, ingest_ms) of a consumed message; records progress."""
    topic, part = msg.topic or "", msg.partition if msg.partition is not None else -1
    offset = msg.offset if msg.offset is not None else -1
    ts_type, ts = msg.timestamp or (0, 0)
    metrics.EVENTS_IN.labels(topic).inc()
    metrics.record_offset(topic, part, offset)
    return topic, part, offset, ts if ts_type else 0


def decode_clickstream(cfg: FlowConfig, msg: Any) -> Ev | Rejected:
    if not isinstance(msg, KafkaSourceMessage):  # a KafkaError surfaced as an item
        return Rejected(f"kafka error: {msg.err}", b"", "", -1, -1, stage="consume")
    topic, part, offset, ingest_ms = _meta(msg)
    out = parse(msg.value, topic=topic, partition=part, offset=offset,
                ingest_ms=ingest_ms, max_skew_ms=cfg.max_skew_ms)
    if isinstance(out, Ev):
        metrics.EVENTS_OK.inc()
    return out


def decode_catalog(cfg: FlowConfig, msg: Any) -> Write | Rejected:
    if not isinstance(msg, KafkaSourceMessage):
        return Rejected(f"kafka error: {msg.err}", b"", "", -1, -1, stage="consume")
    topic, part, offset, ingest_ms = _meta(msg)
    raw = msg.value or b""
    item = events_pb2.ItemUpsert()
    try:
        item.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        return Rejected(f"undecodable ItemUpsert: {exc}", raw, topic, part, offset,
                        stage="decode_catalog")
    if not item.item_id or item.price < 0:
        reason = "missing item_id" if not item.item_id else f"invalid price {item.price}"
        return Rejected(reason, raw, topic, part, offset, stage="decode_catalog")
    value = codecs.encode({
        "title": item.title, "category": item.category, "brand": item.brand,
        "price": item.price, "rating": item.rating, "active": item.active,
        "updated": item.updated_ms,
    })
    return Write("set", cfg.keys.item_catalog(item.item_id), value, ingest_ms, "catalog")


def to_dead_letter(rej: Any) -> KafkaSinkMessage[bytes | None, bytes | None]:
    metrics.DLQ.labels(rej.reason.split(":")[0][:60]).inc()
    return KafkaSinkMessage(key=rej.topic.encode(), value=dead_letter_bytes(rej))


def sessionize(cfg: FlowConfig, state: F.SessionState | None, ev: Ev
               ) -> tuple[F.SessionState | None, list[Out]]:
    upd = F.update_session(
        state, event_id=ev.event_id, user_id=ev.user_id, ts_ms=ev.ts_ms, etype=ev.type,
        item_id=ev.item_id, gap_s=cfg.gap_s, last_n=cfg.last_n, covisit_window=cfg.covisit_window,
    )
    if upd.duplicate:
        metrics.DUPLICATES.inc()
        return upd.state, []
    out: list[Out] = [Write("set", cfg.keys.session(ev.user_id), codecs.encode(upd.state.to_dict()),
                            ev.ingest_ms, "session")]
    if ev.type == "purchase":
        out.append(Write("sadd", cfg.keys.user_purchased(ev.user_id), ev.item_id, ev.ingest_ms,
                         "purchased"))
    if ev.item_id:
        out.append(ItemTouch(ev.item_id, ev.type, ev.ts_ms, ev.quantity, ev.ingest_ms))
    out.extend(Pair(a, b, w, ev.ts_ms, ev.ingest_ms) for a, b, w in upd.pairs)
    return upd.state, out


def item_stats(cfg: FlowConfig, state: F.ItemStats | None, t: ItemTouch
               ) -> tuple[F.ItemStats, list[Write]]:
    new = F.update_item(state, t.etype, t.ts_ms, cfg.half_life_s, t.quantity)
    out = [Write("set", cfg.keys.item_features(t.item_id), codecs.encode(new.to_dict()),
                 t.ingest_ms, "item_stats")]
    if t.etype == "view" and new.views is not None:
        out.append(Write("zadd", cfg.keys.popular(), {t.item_id: new.views}, t.ingest_ms,
                         "popular"))
    if t.etype == "purchase" and new.purchases is not None:
        out.append(Write("zadd", cfg.keys.top_sellers(), {t.item_id: new.purchases}, t.ingest_ms,
                         "top_sellers"))
    return new, out


def covisit(cfg: FlowConfig, state: dict[str, float] | None, p: Pair
            ) -> tuple[dict[str, float], list[Write]]:
    new = F.update_covisit(state, p.dst, p.ts_ms, p.weight, cfg.half_life_s, cfg.covisit_max)
    top = dict(F.top_items(new, cfg.covisit_max))
    return new, [Write("zreplace", cfg.keys.covisit(p.src), top, p.ingest_ms, "covisit")]


def is_ev(x: Ev | Rejected) -> TypeGuard[Ev]:
    return isinstance(x, Ev)


def is_write(x: Write | Rejected) -> TypeGuard[Write]:
    return isinstance(x, Write)


def only_writes(x: Out) -> Write | None:
    return x if isinstance(x, Write) else None


def only_touches(x: Out) -> ItemTouch | None:
    return x if isinstance(x, ItemTouch) else None


def only_pairs(x: Out) -> Pair | None:
    return x if isinstance(x, Pair) else None


# --- wiring ------------------------------------------------------------------------------


def build_flow(settings: Settings, flow_id: str = "features", tail: bool = True) -> Dataflow:
    cfg = FlowConfig.from_settings(settings)
    brokers = [resolve_kafka_bootstrap(settings)]
    kafka_conf = {k: v for k, v in settings.kafka_config().items() if k != "bootstrap.servers"}
    source_conf = {**kafka_conf, "fetch.wait.max.ms": settings.stream_fetch_wait_ms}
    redis_sink = RedisSink(resolve_redis_url(settings))
    dlq_sink = KafkaSink(brokers, settings.topic("dead_letter"), add_config=kafka_conf)

    flow = Dataflow(flow_id)
    # clickstream: KafkaSourceMessage | KafkaError
    raw = op.input("clickstream_in", flow, KafkaSource(
        brokers, [settings.topic("clickstream")], tail=tail, add_config=source_conf,
        batch_size=settings.stream_batch_size, raise_on_errors=False))
    parsed = op.map("decode_validate", raw, lambda m: decode_clickstream(cfg, m))  # Ev | Rejected
    split = op.branch("split_ok_err", parsed, is_ev)
    # errs: Rejected -> DLQ
    dead = split.falses
    # oks: (user_id, Ev)
    by_user = op.key_on("key_by_user", split.trues, lambda e: e.user_id)
    sess_out = op.stateful_flat_map("sessionize", by_user, lambda s, e: sessionize(cfg, s, e))
    sess_items = op.key_rm("unkey_session", sess_out)  # Write | ItemTouch | Pair
    session_writes = op.filter_map("session_writes", sess_items, only_writes)
    touches = op.filter_map("item_touches", sess_items, only_touches)
    pairs = op.filter_map("covisit_pairs", sess_items, only_pairs)
    # items: (item_id, ItemTouch) -> Write
    by_item = op.key_on("key_by_item", touches, lambda t: t.item_id)
    stat_writes = op.key_rm("unkey_items", op.stateful_flat_map(
        "item_stats", by_item, lambda s, t: item_stats(cfg, s, t)))
    # pairs: (src, Pair) -> Write
    by_src = op.key_on("key_by_src", pairs, lambda p: p.src)
    covis_writes = op.key_rm("unkey_covisit", op.stateful_flat_map(
        "covisit", by_src, lambda s, p: covisit(cfg, s, p)))
    # catalog: KafkaSourceMessage -> Write | Rejected
    cat_raw = op.input("catalog_in", flow, KafkaSource(
        brokers, [settings.topic("catalog")], tail=tail, add_config=source_conf,
        batch_size=settings.stream_batch_size, raise_on_errors=False))
    cat = op.branch("split_catalog", op.map("decode_catalog", cat_raw,
                                             lambda m: decode_catalog(cfg, m)),
                    is_write)
    # sinks
    all_dead = op.merge("all_dead_letters", dead, cat.falses)
    op.output("dead_letter_out", op.map("to_dlq_record", all_dead, to_dead_letter), dlq_sink)
    writes = op.merge("all_writes", session_writes, stat_writes, covis_writes, cat.trues)
    op.output("redis_state", writes, redis_sink)
    return flow
