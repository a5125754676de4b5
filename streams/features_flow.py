"""The feature dataflow: clickstream + catalog + users + impressions -> live state in Redis.

    clickstream ─► decode_validate ─┬─ errs ─────────────────────────────────► dead_letter
                                    └─ oks ─► key_by_user ─► sessionize ─┬─ session writes
                                                                         ├─ late ─► dead_letter
                                                                         ├─ pairs ─► key_by_src ─► covisit
                                                                         └─ touches ─┐
    impressions ─► decode_impressions ─► touches (one per served item) ──────────────┤
    catalog     ─► decode_catalog ─┬─ errs ─► dead_letter                            │
                                   └─ rows ──────────────────────────► key_by_item ─► item_step
                                                                                      ├─ item writes
    users       ─► decode_profiles ─ rows ─┐                                          │
                                           └────────► key_by_user_2 ◄─ user touches ──┘
                                                            └─► user_step ─► user writes
    all writes ─► redis_state (one pipelined round trip per batch)

Decoding lives in ``streams.decoders``, the pure step math in ``streams.steps``.
"""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSource
from bytewax.dataflow import Dataflow, Stream

from recsys.settings import Settings, resolve_kafka_bootstrap, resolve_redis_url
from streams import decoders as D
from streams.events import Ev, Rejected
from streams.redis_sink import RedisSink, Write
from streams.steps import (
    CatalogRow,
    Pair,
    ProfileRow,
    StepConfig,
    Touch,
    UserTouch,
    covisit_step,
    item_step,
    sessionize,
    user_step,
)


def _pick(kind: type) -> Any:
    """filter_map function keeping only records of one type (typed split of a stream)."""
    def f(x: object) -> Any:
        return x if isinstance(x, kind) else None
    f.__name__ = f"only_{kind.__name__}"
    return f


def build_flow(settings: Settings, flow_id: str = "features", tail: bool = True) -> Dataflow:
    cfg = StepConfig.from_settings(settings)
    max_skew_ms = int(settings.max_event_skew_s * 1000)
    brokers = [resolve_kafka_bootstrap(settings)]
    kafka_conf = {k: v for k, v in settings.kafka_config().items() if k != "bootstrap.servers"}
    source_conf = {**kafka_conf, "fetch.wait.max.ms": settings.stream_fetch_wait_ms}

    def source(topic: str) -> KafkaSource:
        return KafkaSource(brokers, [settings.topic(topic)], tail=tail, add_config=source_conf,
                           batch_size=settings.stream_batch_size, raise_on_errors=False)

    flow = Dataflow(flow_id)
    # clickstream: KafkaSourceMessage -> Ev | Rejected
    clicks = op.map("decode_validate", op.input("clickstream_in", flow, source("clickstream")),
                    lambda m: D.decode_clickstream(m, max_skew_ms))
    events: Stream[Ev] = op.filter_map("valid_events", clicks, _pick(Ev))
    # (user_id, Ev) -> Write | Touch | Pair | Rejected
    sess = op.key_rm("unkey_sessions", op.stateful_flat_map(
        "sessionize", op.key_on("key_by_user", events, lambda e: e.user_id),
        lambda s, e: sessionize(cfg, s, e)))
    # impressions: KafkaSourceMessage -> Touch (per served item) | Rejected
    imps = op.flat_map("decode_impressions", op.input("impressions_in", flow, source("impressions")),
                       D.decode_impressions)
    # catalog / users: KafkaSourceMessage -> CatalogRow | ProfileRow | Rejected
    cat = op.map("decode_catalog", op.input("catalog_in", flow, source("catalog")), D.decode_catalog)
    prof = op.map("decode_profiles", op.input("users_in", flow, source("users")), D.decode_profile)

    # items: (item_id, Touch | CatalogRow) -> Write | UserTouch
    to_items = op.merge("item_inputs", op.filter_map("touches", sess, _pick(Touch)),
                        op.filter_map("impression_touches", imps, _pick(Touch)),
                        op.filter_map("catalog_rows", cat, _pick(CatalogRow)))
    item_out = op.key_rm("unkey_items", op.stateful_flat_map(
        "item_step", op.key_on("key_by_item", to_items, lambda x: x.item_id),
        lambda s, x: item_step(cfg, s, x)))
    # users: (user_id, UserTouch | ProfileRow) -> Write
    to_users = op.merge("user_inputs", op.filter_map("user_touches", item_out, _pick(UserTouch)),
                        op.filter_map("profile_rows", prof, _pick(ProfileRow)))
    user_writes = op.key_rm("unkey_users", op.stateful_flat_map(
        "user_step", op.key_on("key_by_user_2", to_users, lambda x: x.user_id),
        lambda s, x: user_step(cfg, s, x)))
    # co-visitation: (src, Pair) -> Write
    covis = op.key_rm("unkey_covisit", op.stateful_flat_map(
        "covisit", op.key_on("key_by_src", op.filter_map("pairs", sess, _pick(Pair)),
                             lambda p: p.src),
        lambda s, p: covisit_step(cfg, s, p)))

    # sinks: every Rejected -> dead-letter topic; every Write -> Redis
    dead = op.merge("all_rejected", *(op.filter_map(f"rejected_{i}", s, _pick(Rejected))
                                      for i, s in enumerate((clicks, sess, imps, cat, prof))))
    op.output("dead_letter_out", op.map("to_dlq_record", dead, D.to_dead_letter),
              KafkaSink(brokers, settings.topic("dead_letter"), add_config=kafka_conf))
    writes = op.merge("all_writes", op.filter_map("session_writes", sess, _pick(Write)),
                      op.filter_map("item_writes", item_out, _pick(Write)), user_writes, covis)
    op.output("redis_state", writes, RedisSink(resolve_redis_url(settings)))
    return flow


__all__ = ["Pair", "Touch", "UserTouch", "Write", "build_flow"]
