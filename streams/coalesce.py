"""Per-key write coalescing for the dataflow's stateful steps.

A pure step ``(state, x) -> (state, [records])`` runs on every input; its Redis writes are
held per key and flushed at most once per ``interval_ms`` (the first write after a quiet
period goes out at once, so a cold key is as fresh as without coalescing; a hot item that
gets hundreds of events a second writes a few times a second instead of hundreds). Pending
writes are part of the snapshot and flushed on a timer and at end of input, so the final
Redis state is exactly what writing every update would give (same last value per key).

Snapshots return the state itself: step states are values (never changed once made) or private
maps copied shallowly here, which avoids the generic operators' per-epoch ``deepcopy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bytewax.operators import StatefulLogic

from features.writes import Write
from streams import flow_metrics as metrics

Step = Callable[[Any, Any], tuple[Any, list[Any]]]


class Group:
    """Records of one key from one batch, applied in order (one keyed record instead of many)."""

    __slots__ = ("items", "key")

    def __init__(self, key: str, items: list[Any]) -> None:
        self.key, self.items = key, items


def group_by(records: list[Any], key: Callable[[Any], str]) -> list[Group]:
    groups: dict[str, list[Any]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return [Group(k, items) for k, items in groups.items()]
Snapshot = tuple[Any, list[Write], int]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Coalesce(StatefulLogic[Any, Any, Snapshot]):
    def __init__(self, step: Step, resume: Snapshot | None, interval_ms: int,
                 wrap: Callable[[list[Any]], Any], copy_state: bool = False,
                 name: str = "") -> None:
        self.step, self.interval_ms, self.wrap, self.copy_state = step, interval_ms, wrap, copy_state
        state, pending, last = resume if resume is not None else (None, [], 0)
        self.state: Any = state
        self.keys = metrics.STATE_KEYS.labels(name or "state")
        if state is not None:  # a key restored from a recovery snapshot
            self.keys.inc()
        self.pending: dict[tuple[str, str, str], Write] = {}
        for w in pending:
            self._hold(w)
        self.last_flush_ms = last
        self.due_ms: int | None = last + interval_ms if self.pending else None

    def _hold(self, w: Write) -> None:
        """Keep ``w`` as the pending write of what it writes: a whole value (SET, ZSET
        replace) or one member (ZADD/ZREM of a member, SADD, ZTRIM)."""
        op = w.op
        if op == "set" or op == "zreplace":
            what = (op, w.key, "")
        elif op == "zadd":
            what = ("z", w.key, next(iter(w.value)) if len(w.value) == 1 else "")
        elif op == "zrem":
            what = ("z", w.key, str(w.value))
        else:
            what = (op, w.key, str(w.value))
        pending = self.pending
        if what in pending:
            del pending[what]  # re-insert: emission order follows the latest write
        pending[what] = w

    def _flush(self, now: int) -> list[Write]:
        out = list(self.pending.values())
        self.pending.clear()
        self.last_flush_ms, self.due_ms = now, None
        return out

    def on_item(self, value: Any) -> tuple[list[Any], bool]:
        new_key = self.state is None
        rest = []
        step, hold, state = self.step, self._hold, self.state
        for x in value.items if isinstance(value, Group) else (value,):
            state, outs = step(state, x)
            for o in outs:
                if type(o) is Write:
                    hold(o)
                else:
                    rest.append(o)
        self.state = state
        if new_key and self.state is not None:  # keys are never discarded: a live-key count
            self.keys.inc()
        now = _now_ms()
        if self.pending and now - self.last_flush_ms >= self.interval_ms:
            rest.extend(self._flush(now))
        elif self.pending:
            self.due_ms = self.last_flush_ms + self.interval_ms
        return [self.wrap(rest)], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Any], bool]:
        return [self.wrap(self._flush(_now_ms()))], StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[Any], bool]:
        return ([self.wrap(self._flush(_now_ms()))] if self.pending else []), StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return None if self.due_ms is None else datetime.fromtimestamp(self.due_ms / 1000, tz=UTC)

    def snapshot(self) -> Snapshot:
        state = dict(self.state) if self.copy_state and self.state is not None else self.state
        return state, list(self.pending.values()), self.last_flush_ms
