"""The trainers' own copy of a topic: append-only, incremental, durable. The ranker's trainer
keeps one of ``training-examples``; the two-tower's (``models.tower_retrain``) of ``clickstream``
and ``catalog``.

Why: a topic is not an archive. Real Kafka deletes by retention, and the embedded broker
(librdkafka's mock cluster) keeps only the newest ~5 MB of each partition, a limit its API
cannot change: measured, a retrain that re-read the topic from the beginning every round saw
the newest ~28k examples of the 126k a 600 s ``recsys up`` produced (about two sim hours).
So each round reads only what is new since the last one (offsets kept here) and appends it
to one file per partition; training reads the files. Records the broker dropped before they
were copied are counted (``SyncReport.lost``) and logged, never silently skipped.

Layout: ``<state_dir>/training-examples/<topic>/`` (whatever the topic); per partition
``p<N>.log`` of records, each a 4-byte big-endian length and the record's bytes;
``offsets.json`` maps partition -> next offset to read. Data is flushed and fsynced before the offsets are
replaced (atomic rename), so a crash can repeat records but never skip one (harmless to the
readers: ``models.training_examples`` keeps the latest version of each example_id,
``models.own_sessions`` the latest catalog row and one step per repeated item).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

log = logging.getLogger(__name__)
_LEN = struct.Struct(">I")
STORE_DIR = "training-examples"


@dataclass(frozen=True)
class SyncReport:
    new: int  # records copied this time
    lost: int  # records the topic no longer had when they were due (retention)

    def as_dict(self) -> dict[str, int]:
        return {"new": self.new, "lost_to_retention": self.lost}


class ExampleStore:
    def __init__(self, root: str | Path, topic_key: str = "training") -> None:
        self.root = Path(root)
        self.topic_key = topic_key  # the logical topic name (``Settings.topic``) sync copies
        self.root.mkdir(parents=True, exist_ok=True)
        self._offsets_path = self.root / "offsets.json"

    @classmethod
    def for_settings(cls, settings: Settings, topic_key: str = "training") -> ExampleStore:
        """The store of one of ``settings``' topics: ``<state_dir>/training-examples/<topic>``."""
        return cls(Path(settings.state_dir) / STORE_DIR / settings.topic(topic_key), topic_key)

    def offsets(self) -> dict[int, int]:
        if not self._offsets_path.exists():
            return {}
        return {int(p): int(o) for p, o in json.loads(self._offsets_path.read_text()).items()}

    def append(self, batch: dict[int, tuple[list[bytes], int]]) -> None:
        """Per partition: append its records, then (once, after every file is fsynced) move its
        offset to the given next offset."""
        for partition, (records, _next) in batch.items():
            if records:
                with open(self.root / f"p{partition}.log", "ab") as f:
                    f.write(b"".join(_LEN.pack(len(r)) + r for r in records))
                    f.flush()
                    os.fsync(f.fileno())
        offsets = self.offsets() | {p: nxt for p, (_records, nxt) in batch.items()}
        tmp = self._offsets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(p): o for p, o in sorted(offsets.items())}))
        os.replace(tmp, self._offsets_path)

    def records(self) -> list[bytes]:
        """Every stored record (partition by partition, in offset order)."""
        out: list[bytes] = []
        for path in sorted(self.root.glob("p*.log"), key=lambda p: int(p.stem[1:])):
            buf = path.read_bytes()
            i = 0
            while i + _LEN.size <= len(buf):
                (n,) = _LEN.unpack_from(buf, i)
                if i + _LEN.size + n > len(buf):  # a torn tail (crash mid-write): not yet committed
                    break
                out.append(buf[i + _LEN.size:i + _LEN.size + n])
                i += _LEN.size + n
        return out

    def sync(self, settings: Settings, timeout_s: float = 60.0) -> SyncReport:
        """Copy what the topic has beyond the stored offsets, up to its current end (or as far as
        ``timeout_s`` allows: the next round goes on from there)."""
        from core import kafka

        topic = settings.topic(self.topic_key)
        c = kafka.consumer(settings, group=f"trainer-copy-{uuid.uuid4().hex[:8]}")
        stored = self.offsets()
        try:
            marks = kafka.watermarks(c, topic)
            # below the low watermark: dropped by the broker before we copied it
            start = {p: max(stored.get(p, 0), low) for p, (low, _high) in marks.items()}
            lost = sum(start[p] - stored.get(p, 0) for p in marks)
            if lost:
                log.warning("%s: %d records were deleted by the broker before the "
                            "trainer copied them (retention); they are not in the training set", topic, lost)
            batch: dict[int, tuple[list[bytes], int]] = {p: ([], o) for p, o in start.items()}
            ends = {p: high for p, (_low, high) in marks.items()}
            for part, offset, value in kafka.read_range(c, topic, start, ends, timeout_s):
                records = batch[part][0]
                if value is not None:
                    records.append(value)
                batch[part] = (records, offset + 1)
        finally:
            c.close()
        self.append(batch)
        return SyncReport(new=sum(len(r) for r, _ in batch.values()), lost=lost)
