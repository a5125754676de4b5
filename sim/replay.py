"""Replay a real session dataset as a timed VIEW-event stream to the clickstream topic.

Formats (see ``../shared/data/README.md``):

* **timed** ``*.jsonl[.gz]`` (e.g. ``retailrocket_views/test_sessions_item_ts.jsonl.gz``):
  one JSON list per line of ``[item_id, unix_seconds]``. Events of all sessions are merged in
  timestamp order (ties: session, then position); ``event_time_ms`` is the original
  timestamp; wall-clock gaps between sends are the original gaps divided by ``speed``.
* **untimed** SR-GNN ``*.txt[.gz]`` (``train_sessions.txt.gz``): one session per line of
  space-separated item ids, sessions in time order but without timestamps. Synthetic time:
  sessions are played one after another, consecutive events exactly ``gap_s`` apart (default
  1 s), and the synthetic history is placed so that its last event is at the moment the
  replay starts (so no event is in the future, whatever the speed).

Session ``k`` (0-based line number) becomes user ``{user_prefix}{k}``; item ids are the
dataset's ids as strings. ``event_id`` is deterministic (``replay:<dataset>:<k>:<position>``,
plus ``tag``): replaying the same slice twice is deduplicated downstream; pass a tag to make
a second replay count as new events. ``limit`` keeps the first N events in replay order.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from core.settings import Settings
from core.terminal import open_text
from proto import events_pb2
from sim.produce import DeliveryStats, ProduceError, connect

TIMED_FILE = "test_sessions_item_ts.jsonl.gz"
UNTIMED_FILE = "train_sessions.txt.gz"
DEFAULT_GAP_S = 1.0


class ReplayError(RuntimeError):
    """The dataset is missing or malformed, or the replay cannot run."""


@dataclass(frozen=True, slots=True)
class ReplayEvent:
    ts_ms: int
    session: int
    position: int
    item_id: str


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def resolve(path: str | Path) -> tuple[Path, bool]:
    """(file, timed?) for a dataset file or directory (a directory: the timed file first)."""
    p = Path(path)
    if p.is_dir():
        for name, timed in ((TIMED_FILE, True), (UNTIMED_FILE, False)):
            if (p / name).is_file():
                return p / name, timed
        raise ReplayError(f"{p} holds neither {TIMED_FILE} nor {UNTIMED_FILE}")
    if not p.is_file():
        raise ReplayError(f"no such dataset file or directory: {p}")
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    if name.endswith(".jsonl"):
        return p, True
    if name.endswith(".txt"):
        return p, False
    raise ReplayError(f"{p}: unknown format (expected *.jsonl[.gz] with timestamps or "
                      "SR-GNN *.txt[.gz] sessions)")


@dataclass
class Dataset:
    """A resolved dataset: the events to replay, in order, and how many there are."""

    path: Path
    timed: bool
    total_events: int
    _events: list[ReplayEvent] = field(default_factory=list, repr=False)

    @property
    def label(self) -> str:
        stem = self.path.name.split(".")[0]
        return f"{self.path.parent.name}/{stem}" if self.path.parent.name else stem

    def events(self, start_ms: int, gap_ms: int) -> Iterator[ReplayEvent]:
        """The first ``total_events`` events in replay order (untimed: synthetic times)."""
        if self.timed:
            yield from self._events[: self.total_events]
            return
        j = 0
        with _open(self.path) as fh:
            for k, line in enumerate(fh):
                for pos, item in enumerate(line.split()):
                    if j >= self.total_events:
                        return
                    yield ReplayEvent(start_ms + j * gap_ms, k, pos, item)
                    j += 1


def open_dataset(path: str | Path, limit: int | None = None) -> Dataset:
    """Resolve and read a dataset (timed files are loaded and merged by time)."""
    if limit is not None and limit < 1:
        raise ReplayError(f"limit must be >= 1, got {limit}")
    file, timed = resolve(path)
    try:
        if timed:
            events: list[ReplayEvent] = []
            with open_text(file) as fh:  # a bytes-read bar on a terminal
                for k, line in enumerate(fh):
                    if not line.strip():
                        continue
                    for pos, pair in enumerate(_parse_timed(line, file, k)):
                        events.append(ReplayEvent(pair[1], k, pos, pair[0]))
            events.sort(key=lambda e: (e.ts_ms, e.session, e.position))
            n = len(events) if limit is None else min(limit, len(events))
            return Dataset(file, True, n, events)
        with open_text(file) as fh:
            count = sum(len(line.split()) for line in fh)
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise ReplayError(f"cannot read {file}: {exc}") from exc
    return Dataset(file, False, count if limit is None else min(limit, count))


def _parse_timed(line: str, file: Path, k: int) -> list[tuple[str, int]]:
    try:
        data = json.loads(line)
        return [(str(int(item)), int(float(ts) * 1000)) for item, ts in data]
    except (ValueError, TypeError) as exc:
        raise ReplayError(
            f"{file}:{k + 1}: expected a JSON list of [item_id, unix_seconds]: {exc}"
        ) from None


@dataclass
class ReplayStats(DeliveryStats):
    dataset: str
    speed: float
    total: int
    produced: int = 0
    sessions: set[int] = field(default_factory=set, repr=False)
    first_ts_ms: int = 0
    last_ts_ms: int = 0
    elapsed_s: float = 0.0

    @property
    def rate(self) -> float:
        return self.produced / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def report(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "speed": self.speed,
            "events": self.produced,
            "sessions": len(self.sessions),
            "delivered": self.delivered,
            "failed": self.failed,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate": round(self.rate, 1),
            "dataset_span_s": round((self.last_ts_ms - self.first_ts_ms) / 1000.0, 3),
            "first_event_ms": self.first_ts_ms,
            "last_event_ms": self.last_ts_ms,
        }


def replay(
    settings: Settings,
    path: str | Path,
    *,
    speed: float = 1.0,
    limit: int | None = None,
    gap_s: float = DEFAULT_GAP_S,
    user_prefix: str = "replay-",
    tag: str = "",
    status: Callable[[ReplayStats, float], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    flush_timeout_s: float = 30.0,
) -> ReplayStats:
    """Replay ``path`` to the clickstream topic (see the module doc); returns the stats."""
    if not speed > 0:
        raise ReplayError(f"speed must be > 0 (inf: as fast as possible), got {speed}")
    if gap_s <= 0:
        raise ReplayError(f"gap must be > 0, got {gap_s}")
    ds = open_dataset(path, limit)
    gap_ms = round(gap_s * 1000)
    start_ms = int(time.time() * 1000) - max(ds.total_events - 1, 0) * gap_ms
    topic = settings.topic("clickstream")
    try:
        prod = connect(settings, topic)
    except ProduceError as exc:
        raise ReplayError(str(exc)) from None
    stats = ReplayStats(ds.label, speed, ds.total_events)

    id_base = f"replay:{ds.label}:" + (f"{tag}:" if tag else "")
    t0 = time.monotonic()
    next_status = t0 + 1.0
    for ev in ds.events(start_ms, gap_ms):
        if should_stop():
            break
        if stats.produced == 0:
            stats.first_ts_ms = ev.ts_ms
        due = t0 + (ev.ts_ms - stats.first_ts_ms) / 1000.0 / speed
        while True:  # pace: sleep in short slices, serving delivery callbacks meanwhile
            now = time.monotonic()
            if status is not None and now >= next_status:
                status(stats, now - t0)
                next_status += 1.0
            if now >= due or should_stop():
                break
            prod.poll(min(due - now, 0.05))
        user = f"{user_prefix}{ev.session}"
        value = events_pb2.Event(
            event_id=f"{id_base}{ev.session}:{ev.position}", event_time_ms=ev.ts_ms,
            user_id=user, type=events_pb2.VIEW, item_id=ev.item_id,
            context=events_pb2.Context(device="web", surface="pdp"),
        ).SerializeToString()
        while True:
            try:
                prod.produce(topic, value, user.encode(), on_delivery=stats.on_delivery)
                break
            except BufferError:  # local queue full: let librdkafka drain
                prod.poll(0.05)
        stats.produced += 1
        stats.sessions.add(ev.session)
        stats.last_ts_ms = ev.ts_ms
        if stats.produced % 1000 == 0:
            prod.poll(0)
    stats.elapsed_s = time.monotonic() - t0
    stats.flush(prod, flush_timeout_s)
    return stats
