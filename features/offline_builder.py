"""Offline builder: replays an event log through the dataflow's own step functions.

The training-set builder and the consistency test use it: it calls the very functions the
Bytewax dataflow calls (``features.events``, ``features.record_decoding``,
``features.state_updates``), routing each record as the dataflow's wiring does, and applies the
writes to an in-memory image of the Redis state with the sink's semantics. Same code, so online
and offline features cannot drift."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.settings import Settings
from features import record_decoding as RD
from features.events import Ev, Rejected, parse
from features.record_decoding import Origin
from features.state_updates import (
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
from features.writes import Write, materialize


@dataclass
class StateImage:
    """Redis as a dict: strings (bytes), zsets (member -> score), sets."""

    strings: dict[str, bytes] = field(default_factory=dict)
    zsets: dict[str, dict[str, float]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)

    def apply(self, w: Write) -> None:
        if w.op == "set":
            self.strings[w.key] = materialize(w.value)
        elif w.op == "zreplace":
            mapping = materialize(w.value)
            self.zsets[w.key] = dict(mapping)
            if not mapping:
                del self.zsets[w.key]
        elif w.op == "zadd":
            self.zsets.setdefault(w.key, {}).update(w.value)
        elif w.op == "zrem":
            z = self.zsets.get(w.key, {})
            z.pop(w.value, None)
            if not z:
                self.zsets.pop(w.key, None)
        elif w.op == "ztrim":
            z = self.zsets.get(w.key, {})
            keep = sorted(z.items(), key=lambda kv: (kv[1], kv[0]))[-int(w.value):]
            self.zsets[w.key] = dict(keep)
        elif w.op == "sadd":
            self.sets.setdefault(w.key, set()).add(w.value)
        elif w.op == "notify":
            pass  # a change notification for the scorers (a log entry), not state
        else:
            raise ValueError(f"unknown op {w.op!r}")


class OfflineBuilder:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.cfg = StepConfig.from_settings(settings)
        self.max_skew_ms = int(settings.max_event_skew_s * 1000)
        self.sessions: dict[str, Any] = {}
        self.items: dict[str, Any] = {}
        self.users: dict[str, Any] = {}
        self.covisit: dict[str, Any] = {}
        self.image = StateImage()

    def feed(self, topic: str, value: bytes, *, offset: int = 0, ts_ms: int = 0) -> None:
        """One Kafka record of a logical topic ("clickstream", "catalog", "users", "impressions")."""
        origin = Origin(self.s.topic(topic), 0, offset, ts_ms)
        if topic == "clickstream":
            self._route([parse(value, topic=origin.topic, partition=0, offset=offset, ingest_ms=ts_ms,
                               max_skew_ms=self.max_skew_ms)])
        elif topic == "catalog":
            self._route([RD.catalog_row(value, origin)])
        elif topic == "users":
            self._route([RD.profile_row(value, origin)])
        elif topic == "impressions":
            self._route(list(RD.impression_touches(value, origin)))
        else:
            raise ValueError(f"unknown topic {topic!r}")

    def feed_all(self, records: Iterable[tuple[str, bytes]]) -> StateImage:
        for i, (topic, value) in enumerate(records):
            self.feed(topic, value, offset=i)
        return self.image

    def _route(self, records: list[Any]) -> None:
        """Depth-first through the same graph as ``streams.features_flow``."""
        stack = list(reversed(records))
        while stack:
            x = stack.pop()
            outs: list[Any]
            if isinstance(x, Ev):
                self.sessions[x.user_id], outs = sessionize(self.cfg, self.sessions.get(x.user_id), x)
            elif isinstance(x, Touch | CatalogRow):
                self.items[x.item_id], outs = item_step(self.cfg, self.items.get(x.item_id), x)
            elif isinstance(x, UserTouch | ProfileRow):
                self.users[x.user_id], outs = user_step(self.cfg, self.users.get(x.user_id), x)
            elif isinstance(x, CoVisits):
                outs = list(combine_pairs([x]))
            elif isinstance(x, Pair):
                self.covisit[x.src], outs = covisit_step(self.cfg, self.covisit.get(x.src), x)
            elif isinstance(x, Write):
                self.image.apply(x)
                continue
            elif isinstance(x, Rejected):
                self.image.rejected.append(x)
                continue
            else:
                raise TypeError(f"unroutable record {type(x).__name__}")
            stack.extend(reversed(outs))
