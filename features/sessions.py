"""Sessions: each user's live session (gap-split, last viewed items, counts) as a pure update."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEDUP_WINDOW = 64  # recent event ids remembered per user for idempotency


@dataclass(slots=True)
class SessionState:
    """One user's live session. ``last_viewed`` is most-recent-first, at most N items.

    A value: ``update_session`` returns a new state and never changes the one it was given (not
    ``frozen`` only because a frozen dataclass costs ~5x as much to create, once per event)."""

    session_id: str
    start_ms: int
    last_ms: int
    last_viewed: tuple[str, ...] = ()
    sequence: tuple[tuple[str, int], ...] = ()  # (item, ts) in event-time order, bounded
    counts: tuple[tuple[str, int], ...] = ()  # event type -> count in this session
    recent_ids: tuple[str, ...] = ()  # for de-duplication
    version: int = 0  # bumps on every applied event (the scorer's cache checks it)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sid": self.session_id,
            "start": self.start_ms,
            "last": self.last_ms,
            "items": list(self.last_viewed),
            "seq": self.sequence,  # msgpack writes tuples as arrays
            "counts": dict(self.counts),
            "ver": self.version,
        }


@dataclass(slots=True)
class SessionUpdate:
    state: SessionState
    duplicate: bool
    pairs: tuple[tuple[str, str, float], ...] = field(default=())  # co-visitation (a, b, w)


def count_inc(counts: tuple[tuple[str, int], ...], key: str) -> tuple[tuple[str, int], ...]:
    """``counts`` (sorted by key) with ``key`` incremented (a handful of event types)."""
    for i, (k, n) in enumerate(counts):
        if k == key:
            return (*counts[:i], (k, n + 1), *counts[i + 1:])
    return tuple(sorted((*counts, (key, 1))))


def update_session(
    state: SessionState | None,
    *,
    event_id: str,
    user_id: str,
    ts_ms: int,
    etype: str,
    item_id: str,
    gap_s: float,
    last_n: int,
    max_seq: int = 50,
    covisit_window: int = 3,
) -> SessionUpdate:
    """Apply one event to a user's session. Pure: the same inputs give the same session.

    A gap of more than ``gap_s`` since the session's last event starts a new session whose
    id is derived from the user and its start time (deterministic, replay-safe).
    Views and clicks extend the sequence; each new item pairs with up to ``covisit_window``
    previous distinct items, weighted 1/distance.
    """
    if state is not None and event_id in state.recent_ids:
        return SessionUpdate(state, duplicate=True)
    if state is None or ts_ms - state.last_ms > gap_s * 1000:
        state = SessionState(session_id=f"{user_id}:{ts_ms}", start_ms=ts_ms, last_ms=ts_ms,
                             recent_ids=state.recent_ids if state else (),
                             version=state.version if state else 0)
    recent = (*state.recent_ids, event_id)[-DEDUP_WINDOW:]
    counts = count_inc(state.counts, etype)
    last_ms = state.last_ms if state.last_ms >= ts_ms else ts_ms
    start_ms = state.start_ms if state.start_ms <= ts_ms else ts_ms
    if etype not in ("view", "click") or not item_id:
        new = SessionState(state.session_id, start_ms, last_ms, state.last_viewed, state.sequence,
                           counts, recent, state.version + 1)
        return SessionUpdate(new, duplicate=False)
    seq = state.sequence
    if not seq or ts_ms >= seq[-1][1]:  # the common, in-order case: appended last
        seq = (*seq, (item_id, ts_ms))[-max_seq:]
        pos = len(seq) - 1
    else:
        seq = tuple(sorted((*seq, (item_id, ts_ms)), key=lambda p: p[1])[-max_seq:])
        pos = next(i for i in range(len(seq) - 1, -1, -1) if seq[i] == (item_id, ts_ms))
    pairs: list[tuple[str, str, float]] = []
    seen: set[str] = {item_id}
    dist = 0
    for i in range(pos - 1, -1, -1):
        other = seq[i][0]
        if other in seen:
            continue
        seen.add(other)
        dist += 1
        if dist > covisit_window:
            break
        pairs.append((other, item_id, 1.0 / dist))
        pairs.append((item_id, other, 1.0 / dist))
    last_viewed: list[str] = []
    for i in range(len(seq) - 1, -1, -1):
        other = seq[i][0]
        if other not in last_viewed:
            last_viewed.append(other)
            if len(last_viewed) == last_n:
                break
    new = SessionState(state.session_id, start_ms, last_ms, tuple(last_viewed), seq, counts,
                       recent, state.version + 1)
    return SessionUpdate(new, duplicate=False, pairs=tuple(pairs))
