"""Item rows in scorer memory, column by column: what ranking needs of each item (catalog
fields, live stats, and the hashes of its sparse values) as numpy arrays indexed by a row
number, so a request gathers 500 candidates' features with a few array takes instead of 500
dicts.

Pure memory: ``online.store.RedisStore`` decides what to (re-)read from Redis and writes it
here with ``put``. Thread safety: one writer at a time (a lock); readers take no lock. A
writer grows the arrays (copy, then swap the reference) BEFORE it publishes new row numbers in
``index``, so a reader that looked ids up first and read ``cols`` after always gets arrays
that hold its rows.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from online.features import PER_ITEM_SPARSE, CatalogPart, ItemColumns, ItemRow, StatsPart, combine, hash_token

# column name -> dtype; "category" / "brand" are Python strings (object arrays)
COLUMNS: dict[str, type | str] = {
    "category": object, "brand": object, "price": np.float64, "views": np.float64,
    "ctr": np.float64, "cvr": np.float64, "active": np.bool_,
    "h_item_id": np.int64, "h_category": np.int64, "h_brand": np.int64,
    "cat_t": np.float64, "stats_t": np.float64,  # when each part was read (monotonic s)
    "inval_t": np.float64,  # when the row was last invalidated (monotonic s)
}


@dataclass
class _Parts:
    cat: CatalogPart | None
    stats: StatsPart | None


class ItemTable:
    def __init__(self, capacity: int = 4096) -> None:
        self.index: dict[str, int] = {}
        self._parts: list[_Parts] = []
        self.cols: dict[str, np.ndarray] = {n: _empty(n, capacity) for n in COLUMNS}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.index)

    def rows_of(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row number per id, -1 for ids never put."""
        get = self.index.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    def stale(self, rows: npt.NDArray[np.int64], now: float, cat_ttl_s: float, stats_ttl_s: float
              ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """(catalog part too old, stats too old) per row; unknown rows (-1) are both."""
        cols = self.cols
        known = rows >= 0
        safe = np.where(known, rows, 0)
        return (~known | (now - cols["cat_t"][safe] >= cat_ttl_s),
                ~known | (now - cols["stats_t"][safe] >= stats_ttl_s))

    def put(self, ids: Sequence[str], cats: Sequence[CatalogPart | bool | None],
            stats: Sequence[StatsPart | bool | None], now: float) -> None:
        """Write freshly read parts (None: the key does not exist; ``False``: not re-read, keep
        the part held)."""
        with self._lock:
            assigned: dict[str, int] = {}
            for item in ids:
                if item not in self.index and item not in assigned:
                    assigned[item] = len(self._parts) + len(assigned)
            self._grow(len(self._parts) + len(assigned))
            cols = self.cols
            for item, r in assigned.items():
                self._parts.append(_Parts(None, None))
                cols["cat_t"][r] = cols["stats_t"][r] = cols["inval_t"][r] = -math.inf
                cols["h_item_id"][r] = hash_token("item_id", item)
            for item, cat, st in zip(ids, cats, stats, strict=True):
                r = assigned[item] if item in assigned else self.index[item]
                parts = self._parts[r]
                # invalidated after this read began: what was read may predate the change
                read_t = now if cols["inval_t"][r] < now else -math.inf
                if cat is not False:
                    parts.cat, cols["cat_t"][r] = cat if isinstance(cat, CatalogPart) else None, read_t
                if st is not False:
                    parts.stats, cols["stats_t"][r] = st if isinstance(st, StatsPart) else None, read_t
                self._write(r, combine(parts.cat, parts.stats))
            self.index.update(assigned)  # published last: the rows are written

    def invalidate(self, ids: Sequence[str] | None = None, now: float | None = None) -> int:
        """Mark the rows of ``ids`` (all rows when None) as to be re-read on their next use,
        also if a read that began before ``now`` (default: the monotonic clock) puts them
        afterwards. Returns how many held rows that was."""
        now = time.monotonic() if now is None else now
        rows = (np.arange(len(self)) if ids is None else
                np.fromiter((r for r in map(self.index.get, ids) if r is not None), dtype=np.int64))
        cols = self.cols
        cols["inval_t"][rows] = now
        cols["cat_t"][rows] = -math.inf
        cols["stats_t"][rows] = -math.inf
        return len(rows)

    def gather(self, rows: npt.NDArray[np.int64]) -> ItemColumns:
        """The columns of these rows (all must be known)."""
        cols = self.cols
        return ItemColumns(
            category=cols["category"][rows].tolist(), brand=cols["brand"][rows].tolist(),
            price=cols["price"][rows], views=cols["views"][rows], ctr=cols["ctr"][rows],
            cvr=cols["cvr"][rows], active=cols["active"][rows],
            hashes={n: cols[f"h_{n}"][rows] for n in PER_ITEM_SPARSE})

    # --- writer side (lock held) ---------------------------------------------------------
    def _write(self, r: int, row: ItemRow) -> None:
        cols = self.cols
        for name, value in zip(ItemRow._fields, row, strict=True):
            cols[name][r] = value
        cols["h_category"][r] = hash_token("category", row.category)
        cols["h_brand"][r] = hash_token("brand", row.brand)

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
