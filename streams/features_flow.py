"""The feature dataflow: clickstream + catalog + users + impressions -> live state in Redis.

    clickstream ─► decode_validate ─┬─ errs ────────────────────────────────────────► dead_letter
                   (per batch)      └─ oks by user ─► key_by_user ─► sessionize ─┬─ session writes
                                                                                 ├─ late ─► dead_letter
                                         covisit ◄─ key_by_src ◄─ combine_pairs ◄─┼─ covisits
                                                                                 └─ touches ─┐
    impressions ─► decode_impressions ─► touches (one per served item) ──────────────────────┤
    catalog     ─► decode_catalog ─┬─ errs ─► dead_letter                                    │
                                   └─ rows ──────────────────────────────────► key_by_item ─► item_step
                                                                                              ├─ item writes
    users       ─► decode_profiles ─ rows ─┐                                                  │
                                           └────────► key_by_user_2 ◄─ user touches ──────────┘
                                                            └─► user_step ─► user writes
    all writes ─► redis_state (one pipelined round trip per batch; SETs as MSETs)

Decoding lives in ``streams.decoders``, the pure step math in ``streams.steps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow, Stream

from recsys.settings import Settings, resolve_redis_url
from streams import decoders as D
from streams import kafka_io
from streams.coalesce import Coalesce, Group, group_by
from streams.events import Ev, Rejected
from streams.redis_sink import RedisSink, Write
from streams.steps import (
    CatalogRow,
    CoVisits,
    Pair,
    ProfileRow,
    StepConfig,
    Touch,
    UserTouch,
    combine_pairs,
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


@dataclass(slots=True)
class Bundle:
    """A step's outputs for one input, split by type ONCE (each downstream split is then one
    call per input, not one per output record)."""

    writes: list[Write] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    covisits: list[CoVisits] = field(default_factory=list)
    user_touches: list[UserTouch] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


_SLOTS = {Write: "writes", Touch: "touches", CoVisits: "covisits", UserTouch: "user_touches",
          Rejected: "rejected"}


def _key(x: Any) -> str:
    """The routing key of a record or a ``Group`` (groups carry their key)."""
    if isinstance(x, Group):
        return x.key
    return str(getattr(x, "item_id", None) or x.user_id)


def _user(x: Any) -> str:
    return str(x.user_id)


def _item(x: Any) -> str:
    return str(x.item_id)


def _events_by_user(decoded: list[Ev | Rejected]) -> list[Group | Rejected]:
    """A decoded batch: its valid events grouped by user (one keyed record per user), then its
    rejects."""
    groups = group_by([x for x in decoded if isinstance(x, Ev)], _user)
    return [*groups, *(x for x in decoded if isinstance(x, Rejected))]


def to_bundle(outs: list[Any]) -> Bundle:
    b = Bundle()
    for o in outs:
        getattr(b, _SLOTS[type(o)]).append(o)
    return b


def coalesced(step_id: str, keyed: Any, step: Any, interval_ms: int, wrap: Any = to_bundle,
              copy_state: bool = False) -> Any:
    """A pure keyed step whose Redis writes are coalesced per key (``streams.coalesce``)."""
    return op.key_rm(f"unkey_{step_id}", op.stateful(
        step_id, keyed, lambda resume: Coalesce(step, resume, interval_ms, wrap, copy_state,
                                                step_id)))


def build_flow(settings: Settings, flow_id: str = "features", tail: bool = True) -> Dataflow:
    cfg = StepConfig.from_settings(settings)
    flush_ms = int(settings.stream_flush_interval_ms)
    max_skew_ms = int(settings.max_event_skew_s * 1000)

    def source(topic: str) -> KafkaSource:
        return kafka_io.source(settings, topic, tail)

    flow = Dataflow(flow_id)
    # clickstream: a batch of KafkaSourceMessage -> Group[Ev] per user | Rejected
    clicks = op.flat_map_batch("decode_validate", op.input("clickstream_in", flow,
                                                           source("clickstream")),
                               lambda ms: _events_by_user(D.decode_clickstream_batch(ms, max_skew_ms)))
    by_user: Stream[Group] = op.filter_map("user_events", clicks, _pick(Group))
    # (user_id, Group[Ev]) -> Bundle(writes, touches, covisits, rejected)
    sess = coalesced("sessionize", op.key_on("key_by_user", by_user, _key),
                     partial(sessionize, cfg), flush_ms)
    # impressions: KafkaSourceMessage -> Touch (per served item) | Rejected
    imps = op.flat_map("decode_impressions", op.input("impressions_in", flow, source("impressions")),
                       D.decode_impressions)
    # catalog / users: KafkaSourceMessage -> CatalogRow | ProfileRow | Rejected
    cat = op.map("decode_catalog", op.input("catalog_in", flow, source("catalog")), D.decode_catalog)
    prof = op.map("decode_profiles", op.input("users_in", flow, source("users")), D.decode_profile)

    # items: (item_id, Touch | CatalogRow) -> Write | UserTouch
    touches = op.flat_map_batch("group_touches", sess,
                                lambda bs: group_by([t for b in bs for t in b.touches], _item))
    imp_touches = op.flat_map_batch("group_impressions", op.filter_map(
        "impression_touches", imps, _pick(Touch)), lambda ts: group_by(ts, _item))
    to_items = op.merge("item_inputs", touches, imp_touches,
                        op.filter_map("catalog_rows", cat, _pick(CatalogRow)))
    # (item_id, Group[Touch] | CatalogRow) -> Bundle(writes, user_touches)
    item_out = coalesced("item_step", op.key_on("key_by_item", to_items, _key),
                         partial(item_step, cfg), flush_ms)
    # users: (user_id, UserTouch | ProfileRow) -> Write
    user_touches = op.flat_map_batch("group_user_touches", item_out,
                                     lambda bs: group_by([u for b in bs for u in b.user_touches], _user))
    to_users = op.merge("user_inputs", user_touches,
                        op.filter_map("profile_rows", prof, _pick(ProfileRow)))
    user_writes = coalesced("user_step", op.key_on("key_by_user_2", to_users, _key),
                            partial(user_step, cfg), flush_ms, wrap=list)
    # co-visitation: CoVisits combined per batch into one Pair per source item,
    # then (src, Pair) -> Write
    pairs = op.flat_map_batch("combine_pairs", sess,
                              lambda bs: combine_pairs([c for b in bs for c in b.covisits]))
    covis = coalesced("covisit", op.key_on("key_by_src", pairs, lambda p: p.src),
                      partial(covisit_step, cfg), flush_ms, wrap=list, copy_state=True)

    # sinks: every Rejected -> dead-letter topic; every Write -> Redis
    dead = op.merge("all_rejected", op.flat_map("session_rejected", sess, lambda b: b.rejected),
                    *(op.filter_map(f"rejected_{name}", s, _pick(Rejected))
                      for name, s in (("clicks", clicks), ("imps", imps), ("cat", cat), ("prof", prof))))
    op.output("dead_letter_out", op.map("to_dlq_record", dead, D.to_dead_letter),
              kafka_io.sink(settings, "dead_letter"))
    # Write, or a list of them from one step input (the sink flattens)
    writes = op.merge("all_writes", op.map("session_writes", sess, lambda b: b.writes),
                      op.map("item_writes", item_out, lambda b: b.writes), user_writes, covis)
    op.output("redis_state", writes, RedisSink(resolve_redis_url(settings)))
    return flow


__all__ = ["Pair", "Touch", "UserTouch", "Write", "build_flow"]
