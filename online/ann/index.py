"""``AnnIndex``: hnswlib (inner product) over L2-normalised vectors, keyed by string item ids.

Concurrency (hnswlib's ``add_items``/``mark_deleted``/``resize_index`` are not safe while a
``knn_query`` runs, and all of them release the GIL): a phase-fair readers-writer lock.

* Queries take the lock *shared*: any number of them run in parallel (hnswlib searches are
  safe with each other) and never see a half-applied write.
* Writes take it *exclusively*, but only for one small chunk at a time (``write_batch``
  items, default 4: ~1-2 ms, as one upsert into a 1M-item graph costs ~0.3-0.6 ms);
  between chunks the lock is released and every query that queued meanwhile is admitted
  before the writer's next chunk (phase-fair), so a query waits for at most one chunk, and
  a stream of updates can neither starve queries nor be starved by them. Growing the index
  (``resize_index``) is the one longer exclusive section; capacity grows geometrically so
  it is rare (pre-size with ``capacity``).
* A swap of two index copies would avoid even that wait, but doubles memory per item,
  which the ≤ 1 KiB/item budget does not allow.

Deletes are hnswlib tombstones (``mark_deleted``); new items reuse tombstoned slots
(``allow_replace_deleted``/``replace_deleted``) so churn does not grow memory. Labels are
never reused: hnswlib forgets a replaced slot's old label by erasing that label from its
lookup table, which would break a live item that had been given the same label again.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import hnswlib
import msgpack
import numpy as np
import numpy.typing as npt

SNAPSHOT_FORMAT = 1
META_FILE = "meta.msgpack"


class AnnIndexError(ValueError):
    """Bad input to the index (dimension, zero vector, unreadable snapshot)."""


class RWLock:
    """Phase-fair readers-writer lock: readers share, writers are exclusive.

    A waiting writer blocks new readers (no writer starvation); when a writer releases,
    the readers waiting at that moment go first (no reader starvation).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._readers_waiting = 0
        self._admit = 0  # readers let in ahead of waiting writers after a write phase

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            self._readers_waiting += 1
            while self._writer or (self._writers_waiting and not self._admit):
                self._cond.wait()
            self._readers_waiting -= 1
            if self._admit:
                self._admit -= 1
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers or self._admit:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._admit = self._readers_waiting
                self._cond.notify_all()


def normalise(vectors: npt.ArrayLike, dim: int) -> npt.NDArray[np.float32]:
    """Rows scaled to unit L2 norm, as a C-contiguous float32 (n, dim) array."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise AnnIndexError(f"expected vectors of dimension {dim}, got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0.0))
    if bad.size:
        raise AnnIndexError(f"vector rows {bad[:5].tolist()} are zero or not finite")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)


def _last_wins(ids: Sequence[str], n_rows: int) -> list[int]:
    """Row positions to apply: one per id, the last occurrence wins."""
    if len(ids) != n_rows:
        raise AnnIndexError(f"{len(ids)} ids for {n_rows} vectors")
    last = {item: pos for pos, item in enumerate(ids)}
    return sorted(last.values())


class AnnIndex:
    """HNSW over unit vectors; ``score`` = inner product = cosine similarity."""

    def __init__(
        self,
        dim: int,
        *,
        capacity: int = 1024,
        m: int = 16,
        ef_construction: int = 200,
        ef: int = 200,
        seed: int = 100,
        write_batch: int = 4,
        num_threads: int = 1,
        growth: float = 1.5,
        _index: Any = None,
    ) -> None:
        if dim <= 0 or capacity <= 0 or write_batch <= 0 or growth <= 1.0:
            raise AnnIndexError("dim, capacity and write_batch must be > 0, growth > 1")
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.seed = seed
        self.write_batch = write_batch
        self.num_threads = num_threads
        self.growth = growth
        if _index is None:
            _index = hnswlib.Index(space="ip", dim=dim)
            _index.init_index(
                max_elements=capacity, M=m, ef_construction=ef_construction,
                random_seed=seed, allow_replace_deleted=True,
            )
        self._index = _index
        self._ef = ef
        self._index.set_ef(ef)
        self._lock = RWLock()
        self._label_of: dict[str, int] = {}
        self._id_of: list[str | None] = []  # label -> id (labels are never reused; None: deleted)
        self._next_label = 0
        # a copy of every vector by label (labels are never reused; rows of deleted items stay):
        # get_vectors gathers 500 rows in ~20 us where hnswlib's get_items takes ~2 ms
        self._vecs = np.zeros((0, dim), dtype=np.float32)
        self.last_seq: str | None = None  # last changelog entry applied (set by the follower)
        self.newest_update_ms: int | None = None  # newest update time applied

    # --- size and introspection -----------------------------------------------------------
    def __len__(self) -> int:
        return len(self._label_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label_of

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    @property
    def deleted_slots(self) -> int:
        """Tombstoned slots waiting to be reused by new items."""
        return int(self._index.get_current_count()) - len(self._label_of)

    @property
    def ef(self) -> int:
        return self._ef

    def set_ef(self, ef: int) -> None:
        with self._lock.write():
            self._index.set_ef(ef)
            self._ef = ef

    def ids(self) -> list[str]:
        with self._lock.read():
            return list(self._label_of)

    def get_vectors(self, item_ids: Sequence[str]) -> tuple[list[int], npt.NDArray[np.float32]]:
        """(positions in ``item_ids`` of the items held, their vectors [m, dim]) in one call."""
        with self._lock.read():
            found = [(j, lb) for j, i in enumerate(item_ids) if (lb := self._label_of.get(i)) is not None]
            if not found:
                return [], np.zeros((0, self.dim), dtype=np.float32)
            vecs = self._vecs[np.fromiter((lb for _, lb in found), np.int64, len(found))]  # [m, dim]
        return [j for j, _ in found], vecs

    def get_vector(self, item_id: str) -> npt.NDArray[np.float32] | None:
        """The stored (normalised) vector of an item, or None if absent."""
        found, vecs = self.get_vectors([item_id])
        return vecs[0] if found else None

    # --- writes ---------------------------------------------------------------------------
    def upsert(
        self,
        ids: Sequence[str],
        vectors: npt.ArrayLike,
        *,
        chunk: int | None = None,
        num_threads: int | None = None,
    ) -> None:
        """Add new items and replace the vectors of existing ones (last duplicate wins).

        Applied in chunks of ``chunk`` (default ``write_batch``) rows, each under the
        exclusive lock; a bulk load may pass a large chunk and more threads.
        """
        vecs = normalise(vectors, self.dim)
        rows = _last_wins(ids, vecs.shape[0])
        step = chunk or self.write_batch
        threads = num_threads or self.num_threads
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            with self._lock.write():
                self._apply_chunk([ids[r] for r in part], vecs[part], threads)

    def _apply_chunk(
        self, ids: list[str], vecs: npt.NDArray[np.float32], threads: int
    ) -> None:
        old = [i for i, item in enumerate(ids) if item in self._label_of]
        new = [i for i, item in enumerate(ids) if item not in self._label_of]
        if old:  # in-place update of live items (never replace_deleted: see module doc)
            labels = np.array([self._label_of[ids[i]] for i in old], dtype=np.uint64)
            self._index.add_items(vecs[old], labels, num_threads=threads)
            self._mirror(labels, vecs[old])
        if not new:
            return
        self._ensure_capacity(len(new))
        labels = np.arange(self._next_label, self._next_label + len(new), dtype=np.uint64)
        self._index.add_items(vecs[new], labels, num_threads=threads, replace_deleted=True)
        self._mirror(labels, vecs[new])
        for i, label in zip(new, labels.tolist(), strict=True):
            self._label_of[ids[i]] = label
        self._id_of.extend(ids[i] for i in new)
        self._next_label += len(new)

    def _mirror(self, labels: npt.NDArray[np.uint64], vecs: npt.NDArray[np.float32]) -> None:
        """Copy vectors into ``_vecs`` by label (exclusive lock held), growing it by doubling."""
        need = int(labels.max()) + 1
        if need > len(self._vecs):
            grown = np.zeros((max(need, 2 * len(self._vecs), 1024), self.dim), dtype=np.float32)
            grown[: len(self._vecs)] = self._vecs
            self._vecs = grown
        self._vecs[labels.astype(np.int64)] = vecs

    def _ensure_capacity(self, n_new: int) -> None:
        """Resize (exclusive lock held) if the new items do not fit in free + deleted slots."""
        used = int(self._index.get_current_count())
        needed = used + max(0, n_new - self.deleted_slots)
        cap = self.capacity
        if needed > cap:
            self._index.resize_index(max(needed, math.ceil(cap * self.growth)))

    def delete(self, ids: Iterable[str]) -> int:
        """Tombstone items (absent ids are ignored); returns how many were removed."""
        present = [item for item in dict.fromkeys(ids) if item in self._label_of]
        removed = 0
        for start in range(0, len(present), self.write_batch):
            with self._lock.write():
                for item in present[start : start + self.write_batch]:
                    label = self._label_of.pop(item, None)
                    if label is None:
                        continue
                    self._id_of[label] = None
                    self._index.mark_deleted(label)
                    removed += 1
        return removed

    def mark_applied(self, seq: str | None, updated_ms: int | None = None) -> None:
        """Record the last changelog entry applied and the newest update time seen."""
        with self._lock.write():
            if seq is not None:
                self.last_seq = seq
            if updated_ms is not None:
                self.newest_update_ms = max(updated_ms, self.newest_update_ms or 0)

    # --- reads ----------------------------------------------------------------------------
    def query(
        self, vector: npt.ArrayLike, k: int, exclude: Iterable[str] | None = None
    ) -> list[tuple[str, float]]:
        """Top ``k`` (item_id, cosine score), best first, skipping ids in ``exclude``."""
        if k <= 0:
            return []
        q = normalise(vector, self.dim)
        skip = set(exclude) if exclude else set()
        with self._lock.read():
            want = min(k + len(skip), len(self._label_of))
            labels, dists = self._search(q, want)
            items = list(map(self._id_of.__getitem__, labels.tolist()))
        hits = list(zip(items, (1.0 - dists).tolist(), strict=True))  # C loops: the common case
        if None in items or not skip.isdisjoint(items):  # tombstones or excluded ids among them
            hits = [h for h in hits if h[0] is not None and h[0] not in skip]
        return cast(list[tuple[str, float]], hits[:k])

    def _search(
        self, q: npt.NDArray[np.float32], want: int
    ) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
        """knn_query (read lock held); with many tombstones hnswlib may find fewer than
        ``want`` live items and refuse, so ask for fewer until it answers."""
        while want > 0:
            try:
                labels, dists = self._index.knn_query(q, k=want, num_threads=1)
                return labels[0], dists[0]
            except RuntimeError:
                want //= 2
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.float32)

    # --- snapshots ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Snapshot into directory ``path``: the hnswlib file plus ``meta.msgpack`` (id map,
        last applied sequence), switched atomically by renaming the meta file last.

        Holds the shared lock: queries go on, writes wait until the file is written."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        index_name = f"index-{uuid.uuid4().hex[:12]}.hnsw"
        with self._lock.read():
            self._index.save_index(str(root / index_name))
            meta = self._meta(index_name)
        tmp = root / f"{META_FILE}.tmp"
        with tmp.open("wb") as fh:
            fh.write(msgpack.packb(meta, use_bin_type=True))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, root / META_FILE)
        for stale in root.glob("index-*.hnsw"):
            if stale.name != index_name:
                stale.unlink(missing_ok=True)
        return root

    def _meta(self, index_name: str) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT, "index_file": index_name, "dim": self.dim,
            "m": self.m, "ef_construction": self.ef_construction, "ef": self._ef,
            "seed": self.seed, "write_batch": self.write_batch, "growth": self.growth,
            "capacity": self.capacity, "next_label": self._next_label,
            "last_seq": self.last_seq, "newest_update_ms": self.newest_update_ms,
            "ids": list(self._label_of), "labels": list(self._label_of.values()),
        }

    @classmethod
    def load(cls, path: str | Path, *, num_threads: int = 1) -> AnnIndex:
        """Open a snapshot written by ``save``; raises AnnIndexError if it is unusable."""
        root = Path(path)
        meta = _read_meta(root / META_FILE)
        raw = hnswlib.Index(space="ip", dim=int(meta["dim"]))
        try:
            raw.load_index(
                str(root / meta["index_file"]), max_elements=int(meta["capacity"]),
                allow_replace_deleted=True,
            )
        except RuntimeError as exc:
            raise AnnIndexError(f"snapshot {root}: cannot load index: {exc}") from exc
        idx = cls(
            int(meta["dim"]), m=int(meta["m"]), ef_construction=int(meta["ef_construction"]),
            ef=int(meta["ef"]), seed=int(meta["seed"]), write_batch=int(meta["write_batch"]),
            growth=float(meta["growth"]), num_threads=num_threads, _index=raw,
        )
        idx._label_of = dict(zip(meta["ids"], meta["labels"], strict=True))
        idx._next_label = int(meta["next_label"])
        idx._id_of = [None] * idx._next_label
        for item, label in idx._label_of.items():
            idx._id_of[label] = item
        if idx._label_of:
            labels = np.fromiter(idx._label_of.values(), np.uint64, len(idx._label_of))
            for start in range(0, len(labels), 65536):  # the vector copy, from the index file
                part = labels[start : start + 65536]
                idx._mirror(part, np.asarray(raw.get_items(part), dtype=np.float32))
        idx.last_seq = meta["last_seq"]
        idx.newest_update_ms = meta["newest_update_ms"]
        if idx.deleted_slots < 0:
            raise AnnIndexError(f"snapshot {root}: id map larger than the index file")
        return idx


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = msgpack.unpackb(path.read_bytes(), raw=False)
    except (OSError, ValueError, msgpack.UnpackException) as exc:
        raise AnnIndexError(f"snapshot meta {path}: unreadable: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != SNAPSHOT_FORMAT:
        raise AnnIndexError(f"snapshot meta {path}: format is not {SNAPSHOT_FORMAT}")
    return meta
