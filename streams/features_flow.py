"""The feature dataflow: clickstream + catalog + users + impressions -> live state in Redis.

    clickstream ─► decode_validate (per batch) ─► split_clicks ─┬─ errs ─────────────────► dead_letter
                                                                └─ oks ─► key_by_user ─► sessionize
    sessionize ─┬─ session writes ──────────────────────────────────────────────────────► redis_state
                ├─ rejected (late events) ──────────────────────────────────────────────► dead_letter
                ├─ covisits ─► combine_pairs ─► key_by_source_item ─► covisit ─ writes ─► redis_state
                └─ touches ─► group_touches ───────────────────┐
    impressions ─► decode_impressions ─► split_impressions ─┬──┼─ errs ─────────────────► dead_letter
                                       group_impressions ◄──┘  │
                                              └───────────────►├─ item_inputs
    catalog ─► decode_catalog ─► split_catalog ─┬─ errs ───────┼────────────────────────► dead_letter
                                                └─ rows ───────┘
    item_inputs ─► key_by_item ─► item_step ─┬─ item writes ────────────────────────────► redis_state
                                             └─ user touches ─► group_user_touches ─┐
    users ─► decode_profiles ─► split_profiles ─┬─ errs ────────────────────────────────► dead_letter
                                                └─ rows ─────────────► user_inputs ◄─┘
    user_inputs ─► key_by_user_for_features ─► user_step ─ user writes ─────────────────► redis_state

``redis_state``: one pipelined round trip per batch (SETs as MSETs). Decoding lives in
``streams.decoders`` (over ``features.events`` / ``features.record_decoding``), the pure step math
in ``features.state_updates``, the building blocks in ``streams.flow_parts``.
"""

from __future__ import annotations

from functools import partial

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow

from core.settings import Settings, resolve_redis_url
from features.events import Ev, Rejected
from features.state_updates import (
    Pair,
    StepConfig,
    Touch,
    UserTouch,
    combine_pairs,
    covisit_step,
    item_step,
    sessionize,
    user_step,
)
from features.writes import Write
from streams import decoders as D
from streams import kafka_io
from streams.coalesce import Group, group_by
from streams.flow_parts import Bundle, coalesced, item_of, route_key, split_rejected, user_of
from streams.redis_sink import RedisSink


def events_by_user(max_skew_ms: int, msgs: list[object]) -> list[Group | Rejected]:
    """A batch of clickstream messages: its valid events grouped by user (one keyed record per
    user), then its rejects."""
    decoded = D.decode_clickstream_batch(msgs, max_skew_ms)
    groups = group_by([x for x in decoded if isinstance(x, Ev)], user_of)
    return [*groups, *(x for x in decoded if isinstance(x, Rejected))]


def touches_by_item(bundles: list[Bundle]) -> list[Group]:
    return group_by([t for b in bundles for t in b.touches], item_of)


def user_touches_by_user(bundles: list[Bundle]) -> list[Group]:
    return group_by([u for b in bundles for u in b.user_touches], user_of)


def pairs_of(bundles: list[Bundle]) -> list[Pair]:
    """Co-visits of a batch combined into one ``Pair`` per source item."""
    return combine_pairs([c for b in bundles for c in b.covisits])


def build_flow(settings: Settings, flow_id: str = "features", tail: bool = True) -> Dataflow:
    cfg = StepConfig.from_settings(settings)
    flush_ms = int(settings.stream_flush_interval_ms)
    max_skew_ms = int(settings.max_event_skew_s * 1000)

    def source(topic: str) -> KafkaSource:
        return kafka_io.source(settings, topic, tail)

    flow = Dataflow(flow_id)
    # inputs: KafkaSourceMessage (or a consume error) per record
    click_msgs = op.input("clickstream_in", flow, source("clickstream"))
    impression_msgs = op.input("impressions_in", flow, source("impressions"))
    catalog_msgs = op.input("catalog_in", flow, source("catalog"))
    profile_msgs = op.input("users_in", flow, source("users"))

    # decode: batch of messages -> Group[Ev] per user | Rejected; then oks / errs
    clicks = op.flat_map_batch("decode_validate", click_msgs, partial(events_by_user, max_skew_ms))
    user_events, click_errs = split_rejected("split_clicks", clicks)
    # message -> Touch (one per served item) | Rejected
    impressions = op.flat_map("decode_impressions", impression_msgs, D.decode_impressions)
    impression_touches, impression_errs = split_rejected("split_impressions", impressions)
    # message -> CatalogRow | Rejected, ProfileRow | Rejected
    catalog = op.map("decode_catalog", catalog_msgs, D.decode_catalog)
    catalog_rows, catalog_errs = split_rejected("split_catalog", catalog)
    profiles = op.map("decode_profiles", profile_msgs, D.decode_profile)
    profile_rows, profile_errs = split_rejected("split_profiles", profiles)

    # sessions: (user_id, Group[Ev]) -> Bundle(writes, touches, covisits, rejected)
    keyed_events = op.key_on("key_by_user", user_events, route_key)
    sessions = coalesced("sessionize", keyed_events, partial(sessionize, cfg), flush_ms)

    # items: (item_id, Group[Touch] | CatalogRow) -> Bundle(writes, user_touches)
    session_touches = op.flat_map_batch("group_touches", sessions, touches_by_item)
    served_touches = op.flat_map_batch("group_impressions", impression_touches,
                                       lambda ts: group_by(ts, item_of))
    item_inputs = op.merge("item_inputs", session_touches, served_touches, catalog_rows)
    keyed_items = op.key_on("key_by_item", item_inputs, route_key)
    items = coalesced("item_step", keyed_items, partial(item_step, cfg), flush_ms)

    # users: (user_id, Group[UserTouch] | ProfileRow) -> [Write]
    user_touches = op.flat_map_batch("group_user_touches", items, user_touches_by_user)
    user_inputs = op.merge("user_inputs", user_touches, profile_rows)
    keyed_users = op.key_on("key_by_user_for_features", user_inputs, route_key)
    user_writes = coalesced("user_step", keyed_users, partial(user_step, cfg), flush_ms, wrap=list)

    # co-visitation: (src item, Pair) -> [Write]
    pairs = op.flat_map_batch("combine_pairs", sessions, pairs_of)
    keyed_pairs = op.key_on("key_by_source_item", pairs, lambda p: p.src)
    covisit_writes = coalesced("covisit", keyed_pairs, partial(covisit_step, cfg), flush_ms, wrap=list,
                               copy_state=True)

    # sinks: every Rejected -> dead-letter topic; every Write (or list of them) -> Redis
    late = op.flat_map("session_rejected", sessions, lambda b: b.rejected)
    rejected = op.merge("all_rejected", late, click_errs, impression_errs, catalog_errs, profile_errs)
    dead_letters = op.map("to_dlq_record", rejected, D.to_dead_letter)
    op.output("dead_letter_out", dead_letters, kafka_io.sink(settings, "dead_letter"))
    session_writes = op.map("session_writes", sessions, lambda b: b.writes)
    item_writes = op.map("item_writes", items, lambda b: b.writes)
    writes = op.merge("all_writes", session_writes, item_writes, user_writes, covisit_writes)
    op.output("redis_state", writes, RedisSink(resolve_redis_url(settings), settings))
    return flow


__all__ = ["Pair", "Touch", "UserTouch", "Write", "build_flow"]
