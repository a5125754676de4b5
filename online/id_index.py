"""Item id -> row number for the scorer's in-memory item table, as two numpy arrays.

A request looks up ~500 candidate ids. In a dict of a million string keys each lookup chases
pointers into scattered memory (hash table slot, key object, value object) and costs about a
microsecond in cache and TLB misses. Here the ids are keyed by their Python ``hash`` (64 bits,
computed once per string object and cached on it) in an open-addressing table of int64 keys and
int64 rows: a request's lookups become a few vectorised gathers whose misses overlap.

Exactness:
* Two *stored* ids with the same hash are detected when the second is added: that hash's slot
  is marked ambiguous and both ids go to a small exact dict, which answers for it.
* Looking up an id that was never put returns the row of a stored id only if its 64-bit hash
  equals that id's hash (SipHash, about 10^-13 per lookup with a million rows).

Thread safety: one writer at a time (the item table's lock); readers take no lock. A writer
stores the row before the key of a slot, and a grown table is filled completely before one
reference swap publishes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

EMPTY = 0  # key of a free slot (an id whose hash is 0 is stored under 1)
AMBIGUOUS = -2  # row of a slot shared by several stored ids: ask the overflow dict
State = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], dict[str, int]]  # keys, rows, overflow


def hashes_of(ids: Sequence[str]) -> npt.NDArray[np.int64]:
    """The table keys of these ids (Python's str hash, 0 mapped to 1)."""
    h = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))
    h[h == EMPTY] = 1
    return h


class IdIndex:
    """Ids -> dense row numbers 0, 1, 2, … in the order they were added."""

    def __init__(self, capacity: int = 1024) -> None:
        # (keys, rows, overflow) swapped as one reference; overflow: exact rows of the ids
        # whose hash another stored id shares
        self._state = _empty(capacity)
        self._ids: list[str] = []  # row -> id

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self.get(item_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._ids))

    def get(self, item_id: str) -> int | None:
        row = int(self.rows([item_id])[0])
        return None if row < 0 else row

    def ids_of(self, rows: Sequence[int]) -> list[str]:
        """The ids stored at these rows."""
        held = self._ids
        return [held[r] for r in rows]

    def rows(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Row per id, -1 for ids not stored."""
        if not ids:
            return np.empty(0, dtype=np.int64)
        keys, vals, overflow = self._state
        out = _probe(keys, vals, hashes_of(ids))
        for j in np.flatnonzero(out == AMBIGUOUS).tolist():
            out[j] = overflow.get(ids[j], -1)
        return out

    # --- writer side (the caller serialises writers) -------------------------------------
    def add(self, ids: Sequence[str]) -> npt.NDArray[np.int64]:
        """Store new ids (none held yet, no repeats); returns the rows given to them."""
        first = len(self._ids)
        rows = np.arange(first, first + len(ids), dtype=np.int64)
        if not len(rows):
            return rows
        if 2 * (first + len(ids)) > len(self._state[0]):
            self._state = _build([*self._ids, *ids], 2 * (first + len(ids)))
        else:
            held = self._ids
            _insert(self._state, list(ids), rows, lambda r: held[r] if r < first else ids[r - first])
        self._ids.extend(ids)
        return rows


def _empty(capacity: int) -> State:
    size = 1 << max(4, (2 * capacity - 1).bit_length())  # load factor <= 0.5
    return np.zeros(size, dtype=np.int64), np.full(size, -1, dtype=np.int64), {}


def _build(ids: list[str], capacity: int) -> State:
    state = _empty(capacity)
    _insert(state, ids, np.arange(len(ids), dtype=np.int64), ids.__getitem__)
    return state


def _insert(state: State, ids: list[str], rows: npt.NDArray[np.int64],
            id_of_row: Callable[[int], str]) -> None:
    """Vectorised linear-probing insert. An id whose hash is already a key (a stored id's, or
    an earlier id's of this batch) goes to ``overflow`` with the id it collides with."""
    keys, vals, overflow = state
    mask = len(keys) - 1
    h = hashes_of(ids)
    slot = h & mask
    todo = np.arange(len(h))
    shared: list[int] = []
    while len(todo):
        at = slot[todo]
        k = keys[at]
        same = k == h[todo]
        if same.any():
            shared.extend(todo[same].tolist())
        free = np.flatnonzero(k == EMPTY)
        won = np.zeros(len(todo), dtype=bool)
        if len(free):
            _, first = np.unique(at[free], return_index=True)  # one id per free slot
            win = free[first]
            vals[at[win]] = rows[todo[win]]  # the row first: a reader that sees the key sees it
            keys[at[win]] = h[todo[win]]
            won[win] = True
        moving = (k != EMPTY) & ~same  # held by another hash: next slot; lost a race: retry
        todo, at = todo[~same & ~won], np.where(moving, (at + 1) & mask, at)[~same & ~won]
        slot[todo] = at
    for j in shared:  # rare: make the slot ambiguous and resolve its ids exactly
        s = int(h[j]) & mask
        while keys[s] != h[j]:
            s = (s + 1) & mask
        held = int(vals[s])
        if held != AMBIGUOUS:
            overflow[id_of_row(held)] = held
        overflow[ids[j]] = int(rows[j])
        vals[s] = AMBIGUOUS


def _probe(keys: npt.NDArray[np.int64], vals: npt.NDArray[np.int64], h: npt.NDArray[np.int64]
           ) -> npt.NDArray[np.int64]:
    """Linear probing, vectorised over the ids still looking."""
    mask = len(keys) - 1
    out = np.full(len(h), -1, dtype=np.int64)
    slot = h & mask
    todo = np.arange(len(h))
    while len(todo):
        at = slot[todo]
        k = keys[at]
        hit = k == h[todo]
        out[todo[hit]] = vals[at[hit]]
        on = ~hit & (k != EMPTY)
        todo = todo[on]
        slot[todo] = (at[on] + 1) & mask
    return out
