"""The scorer's only I/O: live state in Redis (swappable: the servicer takes any ``StateStore``).

``user_state`` is ONE pipelined round trip (session, features, purchased items, cached
result). Catalog rows are held in process memory and refreshed from Redis in the background
so ranking never waits on them; the fallback list (top sellers, else popular) likewise.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from proto import codecs
from proto.keys import Keys

log = logging.getLogger(__name__)


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


@dataclass
class CatalogCache:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, item_id: str) -> dict[str, Any] | None:
        return self.rows.get(item_id)


class StateStore(Protocol):
    def user_state(self, user_id: str) -> UserState: ...
    def related(self, items: list[str], per_item: int) -> list[list[tuple[str, float]]]: ...
    def popular(self, n: int) -> list[tuple[str, float]]: ...
    def top_sellers(self, n: int) -> list[tuple[str, float]]: ...
    def catalog(self, item_id: str) -> dict[str, Any] | None: ...
    def trending(self, categories: list[str], n: int) -> list[list[tuple[str, float]]]: ...
    def new_items(self, n: int) -> list[tuple[str, float]]: ...
    def item_stats(self, items: list[str]) -> list[dict[str, Any] | None]: ...
    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None: ...


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        return codecs.decode(raw)
    except codecs.CodecError as exc:
        log.warning("skipping undecodable state value: %s", exc)
        return None


class RedisStore:
    def __init__(self, url: str, keys: Keys, timeout_ms: float = 50.0) -> None:
        self.keys = keys
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_ms / 1000.0, socket_connect_timeout=timeout_ms / 1000.0,
            health_check_interval=0,
        )
        self._catalog = CatalogCache()
        self._lock = threading.Lock()

    # --- request path ----------------------------------------------------------------------
    def user_state(self, user_id: str) -> UserState:
        k = self.keys
        pipe = self.client.pipeline(transaction=False)
        pipe.get(k.session(user_id))
        pipe.get(k.user_features(user_id))
        pipe.smembers(k.user_purchased(user_id))
        pipe.get(k.result_cache(user_id))
        session, feats, bought, cached = pipe.execute()
        return UserState(
            session=_decode(session), features=_decode(feats),
            purchased=frozenset(b.decode() for b in bought or ()), cached=_decode(cached),
        )

    def related(self, items: list[str], per_item: int) -> list[list[tuple[str, float]]]:
        if not items:
            return []
        pipe = self.client.pipeline(transaction=False)
        for it in items:
            pipe.zrevrange(self.keys.covisit(it), 0, per_item - 1, withscores=True)
        return [[(m.decode(), float(s)) for m, s in rows] for rows in pipe.execute()]

    def popular(self, n: int) -> list[tuple[str, float]]:
        rows = self.client.zrevrange(self.keys.popular(), 0, n - 1, withscores=True)
        return [(m.decode(), float(s)) for m, s in rows]

    def top_sellers(self, n: int) -> list[tuple[str, float]]:
        rows = self.client.zrevrange(self.keys.top_sellers(), 0, n - 1, withscores=True)
        return [(m.decode(), float(s)) for m, s in rows]

    def trending(self, categories: list[str], n: int) -> list[list[tuple[str, float]]]:
        pipe = self.client.pipeline(transaction=False)
        for c in categories:
            pipe.zrevrange(self.keys.trending(c), 0, n - 1, withscores=True)
        return [[(m.decode(), float(s)) for m, s in rows] for rows in pipe.execute()]

    def new_items(self, n: int) -> list[tuple[str, float]]:
        rows = self.client.zrevrange(self.keys.new_items(), 0, n - 1, withscores=True)
        return [(m.decode(), float(s)) for m, s in rows]

    def item_stats(self, items: list[str]) -> list[dict[str, Any] | None]:
        if not items:
            return []
        raws = self.client.mget([self.keys.item_features(i) for i in items])
        return [_decode(r) for r in raws]

    def catalog(self, item_id: str) -> dict[str, Any] | None:
        return self._catalog.get(item_id)

    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None:
        self.client.set(self.keys.result_cache(user_id), codecs.encode(value), px=int(ttl_s * 1000))

    # --- background refresh ----------------------------------------------------------------
    def refresh_catalog(self, batch: int = 1000) -> int:
        """Reload catalog rows into process memory (SCAN, never on the request path)."""
        pattern = f"{self.keys.root}:{{i:*}}:cat"
        rows: dict[str, dict[str, Any]] = {}
        keys: list[bytes] = []
        for key in self.client.scan_iter(match=pattern, count=batch):
            keys.append(key)
            if len(keys) >= batch:
                self._load(keys, rows)
                keys = []
        self._load(keys, rows)
        with self._lock:
            self._catalog = CatalogCache(rows)
        return len(rows)

    def _load(self, keys: list[bytes], rows: dict[str, dict[str, Any]]) -> None:
        if not keys:
            return
        for key, raw in zip(keys, self.client.mget(keys), strict=True):
            value = _decode(raw)
            if value is not None:
                item = key.decode().split("{i:", 1)[1].rsplit("}:cat", 1)[0]
                rows[item] = value
