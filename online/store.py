"""The scorer's only I/O: live state in Redis (swappable: the servicer takes any ``StateStore``).

* ``user_state`` is ONE pipelined round trip (session, features, purchased items, cached
  result) and is never cached: the session is what makes a click show up in the next answer.
* Item rows (``features.ranking_features.ItemColumns``: catalog fields, live stats, sparse-value
  hashes) are held in process memory, column by column (``online.item_table``). A row is
  read from Redis on first use and again when the dataflow's item changelog names it
  (``online.item_feed``); ``item_stats_ttl_s`` / ``catalog_ttl_s`` bound how far it may lag
  while the changelog's follower does not vouch for it (``watch``). The reads of one
  request are ONE MGET round trip. At most ``max_items`` rows are held: when a read would
  pass that, the table is rebuilt with the rows requests used most recently (3/4 of
  ``max_items``, less what is being read).
* Shared lists (popular, top sellers, new items, trending per category, co-visitation per
  item) are the same for every user: each is re-read once older than ``list_ttl_s`` (1 s).
  Retrieval names every list its sources will read up front (``prefetch``), so the lists a
  request misses are read in ONE round trip, not one per source.
The fallback list is held in memory (``servicer.FallbackList``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from core.redis_client import redis_client
from core.settings import Settings
from features.ranking_features import ItemColumns, catalog_part, stats_part
from online import scorer_metrics as metrics
from online.item_table import Coverage, ItemTable
from online.redis_wire import Wire
from proto import codecs
from proto.keys import Keys

log = logging.getLogger(__name__)
Rows = list[tuple[str, float]]
ListRef = tuple[str, str, int]  # (kind, name, n): the top n of shared list `kind` ("covisit" of
# item `name`, "trending" of category `name`, "popular", "new_items", "top_sellers"; name "")
V = TypeVar("V")


@dataclass(frozen=True)
class UserState:
    session: dict[str, Any] | None
    features: dict[str, Any] | None
    purchased: frozenset[str]
    cached: dict[str, Any] | None

    @property
    def last_viewed(self) -> list[str]:
        return list(self.session.get("items", [])) if self.session else []

    @property
    def session_version(self) -> int:
        return int(self.session.get("ver", 0)) if self.session else 0


class StateStore(Protocol):
    def user_state(self, user_id: str) -> UserState: ...
    def related(self, items: list[str], per_item: int) -> list[Rows]: ...
    def popular(self, n: int) -> Rows: ...
    def top_sellers(self, n: int) -> Rows: ...
    def item_columns(self, ids: list[str]) -> ItemColumns: ...
    def trending(self, categories: list[str], n: int) -> list[Rows]: ...
    def new_items(self, n: int) -> Rows: ...
    def prefetch(self, lists: list[ListRef]) -> None: ...
    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None: ...


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        return codecs.decode(raw)
    except codecs.CodecError as exc:
        log.warning("skipping undecodable state value: %s", exc)
        return None


def _score_pairs(raw: list[Any]) -> Rows:
    """A raw ZREVRANGE … WITHSCORES reply: flat [member, score, …] (RESP2) or nested
    [[member, score], …] (RESP3) -> [(member, score)]."""
    if raw and isinstance(raw[0], list):
        return [(m.decode(), float(sc)) for m, sc in raw]
    it = iter(raw or ())
    return [(m.decode(), float(sc)) for m, sc in zip(it, it, strict=True)]


class TtlCache(Generic[V]):
    """Values kept ``ttl_s`` seconds, at most ``max_entries``. Entries are kept in refresh
    order, so the expired ones are at the front: each ``put`` drops up to two of them. The
    cache thus holds about what the last ``ttl_s`` seconds read, and frees the rest a little
    at a time: no bulk eviction pause, and little for the garbage collector to walk. Not
    locked: single operations are atomic under the GIL, and a race only re-reads a value."""

    def __init__(self, ttl_s: float, max_entries: int) -> None:
        self.ttl_s, self.max_entries = ttl_s, max_entries
        self._d: OrderedDict[Any, tuple[float, V]] = OrderedDict()

    def get(self, key: Any, now: float) -> V | None:
        hit = self._d.get(key)
        return hit[1] if hit is not None and now - hit[0] < self.ttl_s else None

    def put(self, key: Any, value: V, now: float) -> None:
        d = self._d
        d[key] = (now, value)
        d.move_to_end(key)
        try:
            for _ in range(2):
                if now - next(iter(d.values()))[0] < self.ttl_s:
                    break
                d.popitem(last=False)
            while len(d) > self.max_entries:
                d.popitem(last=False)
        except (RuntimeError, KeyError, StopIteration):  # changed by another thread meanwhile
            pass

    def __len__(self) -> int:
        return len(self._d)


class RedisStore:
    def __init__(self, url: str, keys: Keys, timeout_ms: float = 50.0, *, catalog_ttl_s: float = 30.0,
                 item_stats_ttl_s: float = 2.0, list_ttl_s: float = 1.0,
                 max_items: int = 1_000_000, settings: Settings | None = None) -> None:
        """``settings``: the credentials and TLS options for ``url`` (``core.redis_client``)."""
        self.keys = keys
        self.client: Any = redis_client(
            settings, url=url, timeout_s=timeout_ms / 1000.0, connect_timeout_s=timeout_ms / 1000.0,
            health_check_interval_s=0,
        )
        self.catalog_ttl_s, self.item_stats_ttl_s, self.max_items = catalog_ttl_s, item_stats_ttl_s, max_items
        self.table = ItemTable()
        self.watched = Coverage()  # set by the item changelog follower (``online.item_feed``)
        self._evict_lock = threading.Lock()
        self._inval_lock = threading.Lock()  # invalidations vs the swap of a new table
        self._copying: list[list[str] | None] | None = None  # invalidations during a copy
        self._lists: TtlCache[Rows] = TtlCache(list_ttl_s, 200_000)
        self._local = threading.local()  # .wire: this thread's connection for ``_roundtrip``

    def _roundtrip(self, *commands: tuple[Any, ...], timeout_s: float | None = None) -> list[Any]:
        """Send ``commands`` in one write and read their raw replies (``online.redis_wire``:
        a pipeline without redis-py's per-command machinery, which costs more CPU than Redis
        spends answering). Each thread keeps one connection; an I/O error drops it, so no
        half-read reply is left for the next request. ``timeout_s`` replaces the request
        path's socket timeout for these replies (warm-up)."""
        wire = getattr(self._local, "wire", None)
        if wire is None or wire.broken:
            wire = self._local.wire = Wire(self.client)
        return wire.roundtrip(commands, timeout_s)

    # --- per user (never cached) ---------------------------------------------------------
    def user_state(self, user_id: str) -> UserState:
        k = self.keys
        session, feats, bought, cached = self._roundtrip(
            ("GET", k.session(user_id)), ("GET", k.user_features(user_id)),
            ("SMEMBERS", k.user_purchased(user_id)), ("GET", k.result_cache(user_id)))
        return UserState(
            session=_decode(session), features=_decode(feats),
            purchased=frozenset(b.decode() for b in bought or ()), cached=_decode(cached),
        )

    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None:
        self.client.set(self.keys.result_cache(user_id), codecs.encode(value), px=int(ttl_s * 1000))

    # --- shared lists (cached list_ttl_s) ------------------------------------------------
    def _zsets(self, wanted: list[tuple[str, int]]) -> list[Rows]:
        """Top n of each (ZSET key, n), cached per (key, n); the misses in one pipelined round trip."""
        now = time.monotonic()
        out: list[Rows | None] = [self._lists.get(w, now) for w in wanted]
        missing = [j for j, rows in enumerate(out) if rows is None]
        if missing:
            replies = self._roundtrip(*(("ZREVRANGE", wanted[j][0], 0, wanted[j][1] - 1, "WITHSCORES")
                                        for j in missing))
            for j, raw in zip(missing, replies, strict=True):
                out[j] = rows = _score_pairs(raw)
                self._lists.put(wanted[j], rows, now)
        return [rows or [] for rows in out]

    def _list_key(self, kind: str, name: str) -> str:
        k = self.keys
        if kind == "covisit":
            return k.covisit(name)
        if kind == "trending":
            return k.trending(name)
        single = {"popular": k.popular, "new_items": k.new_items, "top_sellers": k.top_sellers}
        if kind not in single:
            raise ValueError(f"unknown shared list kind {kind!r}")
        return single[kind]()

    def prefetch(self, lists: list[ListRef]) -> None:
        """Read the uncached ones among these shared lists, all in ONE round trip, so the
        sources' own reads that follow are cache hits (nothing to gain when lists are not
        cached: ``list_ttl_s`` 0)."""
        if self._lists.ttl_s > 0 and lists:
            self._zsets(list(dict.fromkeys((self._list_key(kind, name), n) for kind, name, n in lists)))

    def related(self, items: list[str], per_item: int) -> list[Rows]:
        return self._zsets([(self.keys.covisit(i), per_item) for i in items]) if items else []

    def popular(self, n: int) -> Rows:
        return self._zsets([(self.keys.popular(), n)])[0]

    def top_sellers(self, n: int) -> Rows:
        return self._zsets([(self.keys.top_sellers(), n)])[0]

    def trending(self, categories: list[str], n: int) -> list[Rows]:
        return self._zsets([(self.keys.trending(c), n) for c in categories]) if categories else []

    def new_items(self, n: int) -> Rows:
        return self._zsets([(self.keys.new_items(), n)])[0]

    # --- item rows (in process memory, refreshed from Redis) -----------------------------
    def item_columns(self, ids: list[str]) -> ItemColumns:
        """The ``ItemColumns`` of ``ids`` (unknown items get neutral rows) from the in-memory
        item table. Catalog parts older than ``catalog_ttl_s`` and stats older than
        ``item_stats_ttl_s`` (or never read) are re-read first, in ONE round trip."""
        now = time.monotonic()
        table = self.table
        rows = table.rows_of(ids)
        need_cat, need_stats = table.stale(rows, now, self.catalog_ttl_s, self.item_stats_ttl_s,
                                           self.watched)
        if need_cat.any() or need_stats.any():
            table.touch(rows[rows >= 0], now)  # in use: kept should the read make room
            table = self._read_items(ids, need_cat, need_stats, now)  # may be a new table
            rows = table.rows_of(ids)
            if (rows < 0).any():  # evicted meanwhile by another request's read: read again
                gone = list(dict.fromkeys(ids[j] for j in np.flatnonzero(rows < 0).tolist()))
                table = self._read(gone, gone, now)
                rows = table.rows_of(ids)
                if (rows < 0).any():
                    raise RuntimeError(f"item rows evicted while in use: item_cache_max "
                                       f"({self.max_items}) is too small for the load")
        return table.gather(rows, now)

    def _read_items(self, ids: list[str], need_cat: np.ndarray, need_stats: np.ndarray,
                    now: float) -> ItemTable:
        return self._read(list(dict.fromkeys(ids[j] for j in np.flatnonzero(need_cat))),
                          list(dict.fromkeys(ids[j] for j in np.flatnonzero(need_stats))), now)

    def _read(self, cat_ids: list[str], stats_ids: list[str], now: float,
              timeout_s: float | None = None) -> ItemTable:
        """Read these items' catalog rows / stats (one round trip) into the item table; returns
        the table written to, which holds them (``self.table`` may be swapped meanwhile)."""
        commands = []
        if cat_ids:
            commands.append(("MGET", *(self.keys.item_catalog(i) for i in cat_ids)))
        if stats_ids:
            commands.append(("MGET", *(self.keys.item_features(i) for i in stats_ids)))
        res = iter(self._roundtrip(*commands, timeout_s=timeout_s))
        metrics.child(metrics.ITEM_READS, "catalog").inc(len(cat_ids))
        metrics.child(metrics.ITEM_READS, "stats").inc(len(stats_ids))
        cats: dict[str, Any] = dict(zip(cat_ids, (catalog_part(_decode(r)) for r in next(res)),
                                        strict=True)) if cat_ids else {}
        stats: dict[str, Any] = dict(zip(stats_ids, (stats_part(_decode(r)) for r in next(res)),
                                         strict=True)) if stats_ids else {}
        todo = list(dict.fromkeys([*cat_ids, *stats_ids]))
        if len(self.table) + len(todo) > self.max_items:
            self._make_room(len(todo))
        table = self.table
        table.put(todo, [cats.get(i, False) for i in todo], [stats.get(i, False) for i in todo], now)
        metrics.ITEM_ROWS.set(len(table))
        return table

    def invalidate(self, ids: list[str] | None = None) -> int:
        """Mark these items' rows (all rows: None) to be re-read on their next use (the item
        changelog follower calls it). Not lost to an eviction's copy: what arrives during
        one is applied to the new table too. Returns how many held rows that was."""
        with self._inval_lock:
            n = self.table.invalidate(ids)
            if self._copying is not None:
                self._copying.append(ids)
        return n

    def refresh(self, ids: list[str], hot_s: float, limit: int = 2000) -> int:
        """Re-read at once, in one round trip, the rows of those of ``ids`` that requests used
        in the last ``hot_s`` seconds (at most ``limit``). The item changelog follower calls it
        after ``invalidate``: the next request that needs a changed hot row finds it fresh
        instead of reading it on the request path; a cold row waits for its next use. Should
        the read fail or an eviction swap the table meanwhile, the rows stay invalidated (read
        on next use). Returns how many items were read."""
        if hot_s <= 0 or not ids:
            return 0
        now = time.monotonic()
        todo = self.table.used_since(ids, now - hot_s)[:limit]
        if todo:
            self._read(todo, todo, now, timeout_s=1.0)
        return len(todo)

    def watch(self, coverage: Coverage) -> None:
        """What the item changelog follower now vouches for: rows read since
        ``coverage.since`` age from ``coverage.until`` (``ItemTable.stale``)."""
        self.watched = coverage

    def _make_room(self, incoming: int) -> None:
        """Swap in a table of the most recently used rows: 3/4 of ``max_items`` less the
        ``incoming`` rows, so that eviction is rare. The request that does it waits for the
        copy (1.1 s for 750k rows kept, measured); the others go on with the old table."""
        with self._evict_lock:
            table = self.table
            if len(table) + incoming <= self.max_items:
                return  # another request made room meanwhile
            t0 = time.perf_counter()
            with self._inval_lock:
                self._copying = []
            kept: ItemTable | None = None
            try:
                kept = table.keep_recent(self.max_items * 3 // 4 - incoming)
            finally:
                with self._inval_lock:
                    copying, self._copying = self._copying or [], None
                    if kept is not None:  # what was invalidated during the copy, again
                        for ids in copying:
                            kept.invalidate(ids)
                        self.table = kept
            evicted = len(table) - len(self.table)
            metrics.ITEM_EVICTIONS.inc(evicted)
            log.info("item rows: %d least recently used evicted (%d kept) in %.2f s",
                     evicted, len(self.table), time.perf_counter() - t0)

    def preload(self, n: int, batch: int = 2000, stop: threading.Event | None = None,
                timeout_s: float = 5.0) -> int:
        """Warm-up: read the rows of the ``n`` most viewed items (the popularity ZSET, best
        first) into the item table, ``batch`` at a time; returns how many were read. Run in a
        background thread at start: requests meanwhile read what they need themselves. Its
        reads are bulk, so they wait up to ``timeout_s``, not the request path's timeout."""
        loaded = 0
        n = min(n, self.max_items)  # a warm-up never evicts what it loaded
        for start in range(0, n, batch):
            if stop is not None and stop.is_set():
                break
            (top,) = self._roundtrip(("ZREVRANGE", self.keys.popular(), start, min(n, start + batch) - 1),
                                     timeout_s=timeout_s)
            ids = [m.decode() for m in top]
            held = self.table.rows_of(ids) >= 0
            todo = [i for i, h in zip(ids, held.tolist(), strict=True) if not h]
            if todo:
                self._read(todo, todo, time.monotonic(), timeout_s)
            loaded += len(todo)
            if len(ids) < batch:
                break
        return loaded
