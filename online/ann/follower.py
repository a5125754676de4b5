"""The HNSW replica in each scorer process, kept in step with the embedding changelog.

``IndexFollower`` on start loads its on-disk snapshot and replays the changelog after the
snapshot's sequence, or, when there is no usable snapshot or the log was trimmed past it,
builds the index from the keys in Redis (the log position is taken *before* the scan, so
writes racing the scan are replayed; replay is idempotent). A background thread then
follows the log with ``XREAD BLOCK`` and applies adds, replacements and deletes. Writers
use ``EmbeddingStore`` (``features.embedding_store``, re-exported here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from core.redis_client import redis_client
from core.settings import Settings
from features.embedding_store import (
    OP_DELETE,
    ZERO_ID,
    Change,
    EmbeddingStore,
    StoredVector,
    decode_change,
    decode_vector,
    encode_vector,
    parse_id,
    usable,
)
from online.ann.index import META_FILE, AnnIndex, AnnIndexError
from proto import codecs
from proto.keys import Keys

__all__ = ["EmbeddingStore", "IndexFollower", "StoredVector", "decode_vector", "encode_vector",
           "parse_id"]

log = logging.getLogger(__name__)


def validate(fields: dict[bytes, bytes], dim: int) -> Change | str:
    """The change an entry carries, or why it must be skipped ("decode"/"dim"/"invalid")."""
    try:
        change = decode_change(fields)
    except (codecs.CodecError, KeyError, TypeError, ValueError):
        return "decode"
    if change.vector is not None and change.vector.shape[0] != dim:
        return "dim"
    if change.vector is not None and not usable(change.vector[None, :])[0]:
        return "invalid"
    return change


def collapse(entries: list[tuple[bytes, dict[bytes, bytes]]], dim: int
             ) -> tuple[list[Change], dict[str, int]]:
    """The last valid change per item, in log order, and the skipped entries by reason."""
    final: dict[str, Change] = {}
    rejected: dict[str, int] = {}
    for entry_id, fields in entries:
        change = validate(fields, dim)
        if isinstance(change, str):
            rejected[change] = rejected.get(change, 0) + 1
            log.warning("ann follower: skipping changelog entry %r (%s)", entry_id, change)
            continue
        final.pop(change.item, None)
        final[change.item] = change
    return list(final.values()), rejected


class FollowerMetrics:
    def __init__(self, follower: IndexFollower, registry: CollectorRegistry) -> None:
        def gauge(name: str, doc: str, fn: Callable[[], float]) -> Gauge:
            g = Gauge(name, doc, registry=registry)
            g.set_function(fn)
            return g

        f = follower
        gauge("recsys_ann_index_items", "live items in the HNSW replica",
              lambda: float(len(f.index)) if f.index is not None else 0.0)
        gauge("recsys_ann_deleted_slots", "tombstoned HNSW slots awaiting reuse",
              lambda: float(f.index.deleted_slots) if f.index else 0.0)
        gauge("recsys_ann_last_applied_seq_ms",
              "ms part of the last applied changelog entry ID (Redis clock at write)",
              lambda: float(parse_id(f.index.last_seq or ZERO_ID)[0]) if f.index else 0.0)
        gauge("recsys_ann_index_freshness_seconds",
              "now - write time of the newest update applied to the replica", f.freshness_s)
        self.applied = Counter("recsys_ann_changes_applied", "changelog entries applied",
                               registry=registry)
        self.errors = Counter("recsys_ann_follow_errors", "changelog entries or reads failed",
                              ["reason"], registry=registry)


class IndexFollower:
    """Keeps an ``AnnIndex`` in step with the embedding changelog (see module doc).

    Metrics go to ``registry`` (default: the process-wide one, so one follower per process;
    tests pass their own ``CollectorRegistry``).
    """

    def __init__(
        self, client: redis.Redis, keys: Keys, dim: int, *, snapshot_dir: str | Path | None = None,
        snapshot_interval_s: float | None = None, block_ms: int = 500, read_count: int = 512,
        build_threads: int = 1, index_params: dict[str, Any] | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.store = EmbeddingStore(client, keys)
        self.client = client
        self.dim = dim
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.snapshot_interval_s = snapshot_interval_s
        self.block_ms = block_ms
        self.read_count = read_count
        self.build_threads = build_threads
        self.index_params = index_params or {}
        self.index: AnnIndex | None = None
        self.started_from = ""  # "snapshot" or "redis"
        self._cursor = ZERO_ID
        self._applied = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_snapshot = time.monotonic()
        self._snapshot_lock = threading.Lock()
        self.metrics = FollowerMetrics(self, registry or CollectorRegistry())

    @classmethod
    def from_settings(cls, settings: Settings, dim: int, **kw: Any) -> IndexFollower:
        """A follower with its own Redis connection (socket timeout above the XREAD block)."""
        block_ms = int(kw.get("block_ms", 500))
        client = redis_client(settings, timeout_s=block_ms / 1000 + 5.0)
        return cls(client, Keys(prefix=settings.redis_prefix), dim, **kw)

    # --- lifecycle ------------------------------------------------------------------------
    def open(self) -> AnnIndex:
        """Load the snapshot + position, or build from Redis; does not start following."""
        index = self._load_snapshot()
        if index is not None:
            self.started_from = "snapshot"
        else:
            index = self._build_from_redis()
            self.started_from = "redis"
        self.index = index
        self._cursor = index.last_seq or ZERO_ID
        log.info("ann index: %d items from %s, following changelog after %s",
                 len(index), self.started_from, self._cursor)
        return index

    def start(self) -> IndexFollower:
        if self.index is None:
            self.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="ann-follower", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _load_snapshot(self) -> AnnIndex | None:
        if self.snapshot_dir is None or not (self.snapshot_dir / META_FILE).is_file():
            return None
        try:
            index = AnnIndex.load(self.snapshot_dir)
        except AnnIndexError as exc:
            log.warning("ann snapshot unusable, rebuilding from Redis: %s", exc)
            return None
        if index.dim != self.dim:
            log.warning("ann snapshot has dim %d, want %d: rebuilding", index.dim, self.dim)
            return None
        if not self.store.log_covers(index.last_seq or ZERO_ID):
            log.warning("changelog trimmed past snapshot seq %s: rebuilding", index.last_seq)
            return None
        return index

    def _build_from_redis(self) -> AnnIndex:
        index = AnnIndex(self.dim, **self.index_params)
        position = self.store.last_seq()  # before the scan: racing writes get replayed
        ids: list[str] = []
        vecs: list[npt.NDArray[np.float32]] = []
        newest = 0
        for item, stored in self.store.scan():
            if stored.vector.shape[0] != self.dim:
                self.metrics.errors.labels("dim").inc()
                continue
            ids.append(item)
            vecs.append(stored.vector)
            newest = max(newest, stored.updated_ms)
            if len(ids) >= 10_000:
                index.upsert(ids, np.stack(vecs), chunk=10_000, num_threads=self.build_threads)
                ids, vecs = [], []
        if ids:
            index.upsert(ids, np.stack(vecs), chunk=10_000, num_threads=self.build_threads)
        index.mark_applied(position, newest or None)
        return index

    # --- following ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            try:
                self.poll_once(self.block_ms)
                backoff = 0.1
            except (redis.RedisError, AnnIndexError, RuntimeError, ValueError) as exc:
                # Redis down: wait and retry. Anything else is a bug: retry too, visibly
                # (the errors metric grows and freshness degrades), never skip entries.
                reason = "redis" if isinstance(exc, redis.RedisError) else "apply"
                self.metrics.errors.labels(reason).inc()
                log.warning("ann follower: %s error, retrying in %.1fs: %r", reason, backoff, exc)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            if self._snapshot_due():
                self.snapshot()

    def poll_once(self, block_ms: int | None = None) -> int:
        """Read and apply one batch of changelog entries; returns how many were read."""
        if self.index is None:
            raise RuntimeError("IndexFollower.open() or start() first")
        resp: Any = self.client.xread({self.store.log_key: self._cursor}, count=self.read_count,
                                      block=block_ms)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = resp[0][1] if resp else []
        if entries:
            self._apply(entries)
        return len(entries)

    def _apply(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        assert self.index is not None
        changes, rejected = collapse(entries, self.dim)
        for reason, n in rejected.items():
            self.metrics.errors.labels(reason).inc(n)
        ups = [(c.item, c.vector) for c in changes if c.vector is not None]
        if ups:
            self.index.upsert([item for item, _ in ups], np.stack([vec for _, vec in ups]))
        self.index.delete([c.item for c in changes if c.op == OP_DELETE])
        last = entries[-1][0]
        self._cursor = last.decode() if isinstance(last, bytes) else str(last)
        self.index.mark_applied(self._cursor, max((c.ms for c in changes), default=0) or None)
        self.metrics.applied.inc(len(entries))
        with self._applied:
            self._applied.notify_all()

    def wait_until(self, seq: str, timeout: float) -> bool:
        """Block until the entry ``seq`` has been applied (read-your-writes); False on timeout."""
        target = parse_id(seq)
        deadline = time.monotonic() + timeout
        with self._applied:
            while parse_id(self._cursor) < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._applied.wait(left)
        return True

    # --- snapshots and metrics --------------------------------------------------------------
    def _snapshot_due(self) -> bool:
        interval = self.snapshot_interval_s
        return bool(self.snapshot_dir and interval and
                    time.monotonic() - self._last_snapshot >= interval)

    def snapshot(self) -> Path | None:
        """Write the index snapshot now (queries continue; the follower pauses meanwhile)."""
        if self.snapshot_dir is None or self.index is None:
            return None
        with self._snapshot_lock:
            self._last_snapshot = time.monotonic()
            return self.index.save(self.snapshot_dir)

    def freshness_s(self) -> float:
        newest = self.index.newest_update_ms if self.index is not None else None
        return max(0.0, time.time() - newest / 1000) if newest else float("nan")
