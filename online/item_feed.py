"""Keeps the scorer's in-memory item rows fresh: follows the dataflow's item changelog.

The feature dataflow's Redis sink XADDs the ids of the items each batch changed (stats or
catalog row) to ``Keys.item_changelog`` AFTER the writes themselves. This thread reads it
with ``XREAD BLOCK`` and invalidates those items' rows in the ``ItemTable``; the next request
that needs one re-reads it (``RedisStore.item_columns``). So a click's effect on an item's
CTR reaches ranking within the feed's latency (milliseconds), while an unchanged item costs no
Redis read at all. After a Redis error the follower cannot know what it missed (the log is
trimmed): it invalidates every row, then goes on from the log's end. The TTLs of
``RedisStore`` remain a bound on staleness if the feed itself stops.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import msgpack
import redis
from prometheus_client import Counter

from online.item_table import ItemTable

log = logging.getLogger(__name__)
CHANGES = Counter("recsys_serve_item_changes_total", "Item change notifications read from the changelog")
INVALIDATED = Counter("recsys_serve_item_rows_invalidated_total",
                      "In-memory item rows marked for re-read by the changelog")


class ItemChangeFollower:
    def __init__(self, client: Any, key: str, table: Any, block_ms: int = 1000) -> None:
        self.client, self.key, self.block_ms = client, key, block_ms
        self._table = table  # an ItemTable, or a callable returning the current one
        self.last_id = "$"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="item-changes", daemon=True)

    @property
    def table(self) -> ItemTable:
        return self._table() if callable(self._table) else self._table

    def start(self) -> ItemChangeFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def poll_once(self) -> int:
        """Read what the log holds after ``last_id`` (waiting up to ``block_ms``) and
        invalidate those items; returns how many ids were read."""
        if self.last_id == "$":  # from the log's current end: pin it, so nothing after is missed
            newest = self.client.xrevrange(self.key, count=1)
            self.last_id = newest[0][0] if newest else "0-0"
        reply = self.client.xread({self.key: self.last_id}, count=1000, block=self.block_ms)
        n = 0
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                ids = [i.decode() if isinstance(i, bytes) else str(i)
                       for i in msgpack.unpackb(fields.get(b"ids", b"\x90"), raw=True)]
                INVALIDATED.inc(self.table.invalidate(ids))
                n += len(ids)
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        CHANGES.inc(n)
        return n

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.poll_once()
                if failing:  # back: what changed meanwhile is unknown
                    INVALIDATED.inc(self.table.invalidate())
                    failing = False
            except (redis.RedisError, OSError, ValueError) as exc:
                if not failing:
                    log.warning("item changelog unreadable, rows fall back to their TTLs: %s", exc)
                failing, self.last_id = True, "$"
                self._stop.wait(1.0)
