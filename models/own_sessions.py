"""Our own shoppers' sessions and catalog, from the topics' records, for the two-tower trainer.

Pure (no I/O): the records come from the trainer's copies of the ``clickstream`` and ``catalog``
topics (``models.example_store``).

* Sessions: each user's views and clicks (what the live session sequence holds) in event-time order,
  cut where two events are more than ``gap_ms`` apart (the features dataflow's session gap),
  repeats of the item just touched folded into one step; sessions of fewer than two items
  teach nothing and are dropped. Sorted by start time, so "the newest sessions" is a suffix.
* Catalog: the latest row of each item (by ``updated_ms``, then by position in the log).

Records that do not decode, or lack a user or item id, are counted, never raised: the dataflow
has already sent them to the dead-letter topic with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from proto import events_pb2

# what extends the live session's sequence (``features.sessions.update_session``)
ITEM_EVENT_TYPES = frozenset({events_pb2.VIEW, events_pb2.CLICK})


@dataclass(frozen=True)
class Session:
    user_id: str
    start_ms: int
    end_ms: int
    items: tuple[str, ...]  # oldest first, no immediate repeats


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog row as the item tower reads it (``models.two_tower.CatalogContent``)."""

    category: str
    brand: str
    price: float
    title: str
    active: bool
    updated_ms: int


@dataclass
class ReadCounts:
    events: int = 0  # item events used
    skipped: int = 0  # other event types (impressions, carts, purchases)
    undecodable: int = 0
    missing_ids: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"events": self.events, "skipped_types": self.skipped, "undecodable": self.undecodable,
                "missing_ids": self.missing_ids}


def sessions_from_clickstream(records: Iterable[bytes], gap_ms: int,
                              counts: ReadCounts | None = None) -> list[Session]:
    """The sessions of the clickstream ``records`` (module doc), oldest start first."""
    counts = counts if counts is not None else ReadCounts()
    per_user: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    ev = events_pb2.Event()
    for seq, raw in enumerate(records):
        try:
            ev.ParseFromString(raw or b"")
        except (DecodeError, ValueError):
            counts.undecodable += 1
            continue
        if ev.type not in ITEM_EVENT_TYPES:
            counts.skipped += 1
            continue
        if not ev.user_id or not ev.item_id:
            counts.missing_ids += 1
            continue
        counts.events += 1
        per_user[ev.user_id].append((ev.event_time_ms, seq, ev.item_id))
    out: list[Session] = []
    for user, evs in per_user.items():
        evs.sort()
        items: list[str] = []
        start = last = evs[0][0]
        for t, _seq, item in evs:
            if t - last > gap_ms:
                if len(items) >= 2:
                    out.append(Session(user, start, last, tuple(items)))
                items, start = [], t
            if not items or items[-1] != item:
                items.append(item)
            last = t
        if len(items) >= 2:
            out.append(Session(user, start, last, tuple(items)))
    out.sort(key=lambda s: (s.start_ms, s.user_id))
    return out


def latest_catalog(records: Iterable[bytes]) -> dict[str, CatalogEntry]:
    """item id -> its latest catalog row (module doc); undecodable rows are left out."""
    best: dict[str, tuple[int, int, CatalogEntry]] = {}
    row = events_pb2.ItemUpsert()
    for seq, raw in enumerate(records):
        try:
            row.ParseFromString(raw or b"")
        except (DecodeError, ValueError):
            continue
        if not row.item_id:
            continue
        key = (row.updated_ms, seq)
        prev = best.get(row.item_id)
        if prev is None or key >= prev[:2]:
            best[row.item_id] = (*key, CatalogEntry(row.category, row.brand, row.price, row.title,
                                                    row.active, row.updated_ms))
    return {item: entry for item, (_t, _s, entry) in best.items()}


def split_newest(sessions: list[Session], holdout_share: float) -> tuple[list[Session], list[Session]]:
    """(older, newest) by start time: the newest ``holdout_share`` of the sessions held out."""
    n_hold = round(len(sessions) * holdout_share)
    cut = len(sessions) - n_hold
    return sessions[:cut], sessions[cut:]


def vocabulary(sessions: Iterable[Session]) -> dict[str, int]:
    """item id -> id-embedding row (1..n, in order of first appearance; 0 = no trained id)."""
    vocab: dict[str, int] = {}
    for s in sessions:
        for item in s.items:
            if item not in vocab:
                vocab[item] = len(vocab) + 1
    return vocab


def next_item_cases(sessions: Iterable[Session], last_n: int,
                    max_cases: int | None = None) -> list[tuple[tuple[str, ...], str]]:
    """Every (recent items newest first, at most ``last_n``; the next item) of the sessions,
    as the scorer's ANN source sees a session (``last_n_viewed``); newest sessions' cases
    last, the newest ``max_cases`` kept."""
    cases: list[tuple[tuple[str, ...], str]] = []
    for s in sessions:
        for j in range(1, len(s.items)):
            recent = tuple(dict.fromkeys(reversed(s.items[max(0, j - 4 * last_n):j])))[:last_n]
            if s.items[j] not in recent:  # the ANN source excludes what was just viewed
                cases.append((recent, s.items[j]))
    return cases if max_cases is None else cases[-max_cases:]
