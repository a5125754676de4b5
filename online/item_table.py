"""Item rows in scorer memory, column by column: what ranking needs of each item (catalog
fields, live stats, and the hashes of its sparse values) as numpy arrays indexed by a row
number, so a request gathers 500 candidates' features with a few array takes instead of 500
dicts.

Pure memory: ``online.store.RedisStore`` decides what to (re-)read from Redis and writes it
here with ``put``. Thread safety: one writer at a time (a lock); readers take no lock. A
writer grows the arrays (copy, then swap the reference) BEFORE it publishes new row numbers in
``index``, so a reader that looked ids up first and read ``cols`` after always gets arrays
that hold its rows.

Bounded memory: ``keep_recent(n)`` builds a new table of the n rows requests used most
recently (``gather`` stamps them), which the store swaps in when the table is full.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from features.ranking_features import (
    PER_ITEM_SPARSE,
    CatalogPart,
    ItemColumns,
    ItemRow,
    StatsPart,
    combine,
    hash_token,
)
from online.id_index import IdIndex

# column name -> dtype; "category" / "brand" are Python strings (object arrays)
COLUMNS: dict[str, type | str] = {
    "category": object, "brand": object, "price": np.float64, "views": np.float64,
    "ctr": np.float64, "cvr": np.float64, "active": np.bool_, "rating": np.float64,
    "first_ms": np.float64,
    "h_item_id": np.int64, "h_category": np.int64, "h_brand": np.int64,
    "cat_t": np.float64, "stats_t": np.float64,  # when each part was read (monotonic s)
    "inval_t": np.float64,  # when the row was last invalidated (monotonic s)
    "used_t": np.float64,  # when a request last gathered the row, or it was added (monotonic s)
}


class Coverage(NamedTuple):
    """What the item changelog follower vouches for (monotonic seconds): every change
    announced after ``since`` and before ``until`` has invalidated its rows. ``until``
    -inf: nothing (no follower, or it is failing)."""

    since: float = math.inf
    until: float = -math.inf


class ItemTable:
    def __init__(self, capacity: int = 4096) -> None:
        self.index = IdIndex(capacity)
        # per row, the parts the combined columns came from, as plain tuples (None: no such
        # key): exact tuples of atomic values, which the garbage collector stops tracking
        self._cat: list[tuple[object, ...] | None] = []
        self._stats: list[tuple[object, ...] | None] = []
        self.cols: dict[str, np.ndarray] = {n: _empty(n, capacity) for n in COLUMNS}
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str], int] = {}  # (field, value) -> hash: categories repeat

    def __len__(self) -> int:
        return len(self.index)

    def rows_of(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row number per id, -1 for ids never put."""
        return self.index.rows(ids)

    def stale(self, rows: npt.NDArray[np.int64], now: float, cat_ttl_s: float, stats_ttl_s: float,
              watched: Coverage | None = None) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """(catalog part too old, stats too old) per row; unknown and invalidated rows are both.

        A part's age counts from when it was read, or, when the item changelog was being
        watched then (``watched.since``), from the time up to which the watch has applied
        every change (``watched.until``): no invalidation since means no change since."""
        cols = self.cols
        known = rows >= 0
        safe = np.where(known, rows, 0)
        cover = watched if watched is not None and watched.until > -math.inf else None

        def too_old(part_t: npt.NDArray[np.float64], ttl_s: float) -> npt.NDArray[np.bool_]:
            if cover is not None:
                part_t = np.where(part_t >= cover.since, np.maximum(part_t, cover.until), part_t)
            return ~known | (now - part_t >= ttl_s)
        return too_old(cols["cat_t"][safe], cat_ttl_s), too_old(cols["stats_t"][safe], stats_ttl_s)

    def put(self, ids: Sequence[str], cats: Sequence[CatalogPart | bool | None],
            stats: Sequence[StatsPart | bool | None], now: float) -> None:
        """Write freshly read parts (None: the key does not exist; ``False``: not re-read, keep
        the part held). Column writes are batched: a bulk load costs a few µs per item."""
        with self._lock:
            r_arr = self.index.rows(ids)
            unknown = r_arr < 0
            missing = [ids[j] for j in np.flatnonzero(unknown).tolist()]
            added = list(dict.fromkeys(missing))
            first = len(self.index)  # the rows ``index.add`` will give them
            self._grow(first + len(added))
            cols = self.cols
            if added:
                assigned = dict(zip(added, range(first, first + len(added)), strict=True))
                r_arr[unknown] = [assigned[i] for i in missing]
                new = np.arange(first, first + len(added))
                self._cat.extend(None for _ in added)
                self._stats.extend(None for _ in added)
                for name in ("cat_t", "stats_t", "inval_t"):
                    cols[name][new] = -math.inf
                cols["used_t"][new] = now
                cols["h_item_id"][new] = [hash_token("item_id", i) for i in added]
            rows: list[int] = r_arr.tolist()
            # invalidated after this read began: what was read may predate the change
            read_t = np.where(cols["inval_t"][r_arr] < now, now, -math.inf)
            combined = []
            held_cat, held_stats = self._cat, self._stats
            for r, cat, st in zip(rows, cats, stats, strict=True):
                if cat is not False:
                    held_cat[r] = tuple(cat) if isinstance(cat, CatalogPart) else None
                if st is not False:
                    held_stats[r] = tuple(st) if isinstance(st, StatsPart) else None
                c, x = held_cat[r], held_stats[r]
                combined.append(combine(None if c is None else CatalogPart._make(c),
                                        None if x is None else StatsPart._make(x)))
            cat_read = np.fromiter((c is not False for c in cats), dtype=bool, count=len(rows))
            st_read = np.fromiter((x is not False for x in stats), dtype=bool, count=len(rows))
            cols["cat_t"][r_arr[cat_read]] = read_t[cat_read]
            cols["stats_t"][r_arr[st_read]] = read_t[st_read]
            if combined:
                for name, values in zip(ItemRow._fields, zip(*combined, strict=True), strict=True):
                    cols[name][r_arr] = values
                cols["h_category"][r_arr] = [self._hash("category", c) for c in cols["category"][r_arr]]
                cols["h_brand"][r_arr] = [self._hash("brand", b) for b in cols["brand"][r_arr]]
            self.index.add(added)  # published last: the rows are written

    def _hash(self, field: str, value: str) -> int:
        key = (field, value)
        h = self._memo.get(key)
        if h is None:
            if len(self._memo) > 1_000_000:
                self._memo.clear()
            h = self._memo[key] = hash_token(field, value)
        return h

    def invalidate(self, ids: Sequence[str] | None = None, now: float | None = None) -> int:
        """Mark the rows of ``ids`` (all rows when None) as to be re-read on their next use,
        also if a read that began before ``now`` (default: the monotonic clock) puts them
        afterwards. Returns how many held rows that was."""
        now = time.monotonic() if now is None else now
        if ids is None:
            rows = np.arange(len(self))
        else:
            rows = self.index.rows(ids)
            rows = rows[rows >= 0]
        cols = self.cols
        cols["inval_t"][rows] = now
        cols["cat_t"][rows] = -math.inf
        cols["stats_t"][rows] = -math.inf
        return len(rows)

    def gather(self, rows: npt.NDArray[np.int64], now: float | None = None) -> ItemColumns:
        """The columns of these rows (all must be known); with ``now``, the rows are marked
        used then (what ``keep_recent`` keeps)."""
        cols = self.cols
        if now is not None:
            self.touch(rows, now)
        return ItemColumns(
            category=cols["category"][rows].tolist(), brand=cols["brand"][rows].tolist(),
            price=cols["price"][rows], views=cols["views"][rows], ctr=cols["ctr"][rows],
            cvr=cols["cvr"][rows], active=cols["active"][rows],
            hashes={n: cols[f"h_{n}"][rows] for n in PER_ITEM_SPARSE},
            rating=cols["rating"][rows], first_ms=cols["first_ms"][rows])

    def used_since(self, ids: Sequence[str], t: float) -> list[str]:
        """Those of ``ids`` (held, each once, in order) whose rows were used at ``t`` or later."""
        rows = self.index.rows(ids)
        held = np.flatnonzero(rows >= 0)
        recent = held[self.cols["used_t"][rows[held]] >= t]
        return list(dict.fromkeys(ids[j] for j in recent.tolist()))

    def touch(self, rows: npt.NDArray[np.int64], now: float) -> None:
        """Mark these rows used at ``now`` (no lock: a stamp lost to a concurrent grow only
        makes that row look older)."""
        self.cols["used_t"][rows] = now

    def keep_recent(self, n: int) -> ItemTable:
        """A new table holding the ``n`` rows used most recently (ties: any of them), with
        everything this one knows of them; this table is left as it was, so readers holding
        it go on. Writes to this table while the copy is made wait for it."""
        with self._lock:
            held = len(self)
            used = self.cols["used_t"][:held]
            if n >= held:
                keep = np.arange(held)
            elif n <= 0:
                keep = np.empty(0, dtype=np.int64)
            else:
                keep = np.sort(np.argpartition(-used, n - 1)[:n])  # stored order kept
            table = ItemTable(max(4096, len(keep) + len(keep) // 2))
            table._memo = self._memo
            rows = keep.tolist()
            table._cat = [self._cat[r] for r in rows]
            table._stats = [self._stats[r] for r in rows]
            for name, arr in self.cols.items():
                table.cols[name][: len(keep)] = arr[keep]
            table.index.add(self.index.ids_of(rows))
            return table

    # --- writer side (lock held) ---------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = len(self.cols["price"])
        if need <= cap:
            return
        while cap < need:
            cap *= 2
        grown = {}
        for name, old in self.cols.items():
            arr = _empty(name, cap)
            arr[: len(old)] = old
            grown[name] = arr
        self.cols = grown  # one reference swap: readers see old or new arrays, both valid


def _empty(name: str, n: int) -> np.ndarray:
    arr = np.empty(n, dtype=COLUMNS[name])
    if COLUMNS[name] is object:
        arr[:] = ""
    return arr
