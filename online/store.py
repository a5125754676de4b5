"""The scorer's only I/O: live state in Redis (swappable: the servicer takes any ``StateStore``).

``user_state`` is ONE pipelined round trip (session, features, purchased items, cached
result); ``items`` is one more (item stats, and catalog rows missing from the in-process
catalog cache, which keeps rows ``catalog_ttl_s`` so a price change or deactivation reaches
the scorer within that time). The fallback list is held in memory (``servicer.FallbackList``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
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


class StateStore(Protocol):
    def user_state(self, user_id: str) -> UserState: ...
    def related(self, items: list[str], per_item: int) -> list[list[tuple[str, float]]]: ...
    def popular(self, n: int) -> list[tuple[str, float]]: ...
    def top_sellers(self, n: int) -> list[tuple[str, float]]: ...
    def items(self, ids: list[str], catalog_also: list[str] = ...
              ) -> tuple[list[dict[str, Any] | None], dict[str, dict[str, Any]]]: ...
    def trending(self, categories: list[str], n: int) -> list[list[tuple[str, float]]]: ...
    def new_items(self, n: int) -> list[tuple[str, float]]: ...
    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None: ...


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    try:
        return codecs.decode(raw)
    except codecs.CodecError as exc:
        log.warning("skipping undecodable state value: %s", exc)
        return None


class RedisStore:
    def __init__(self, url: str, keys: Keys, timeout_ms: float = 50.0, catalog_ttl_s: float = 30.0,
                 catalog_max: int = 2_000_000) -> None:
        self.keys = keys
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=timeout_ms / 1000.0, socket_connect_timeout=timeout_ms / 1000.0,
            health_check_interval=0,
        )
        self.catalog_ttl_s, self.catalog_max = catalog_ttl_s, catalog_max
        self._catalog: dict[str, tuple[float, dict[str, Any]]] = {}

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

    def cache_result(self, user_id: str, value: dict[str, Any], ttl_s: float) -> None:
        self.client.set(self.keys.result_cache(user_id), codecs.encode(value), px=int(ttl_s * 1000))

    def items(self, ids: list[str], catalog_also: list[str] = []  # noqa: B006 - never mutated
              ) -> tuple[list[dict[str, Any] | None], dict[str, dict[str, Any]]]:
        """Item stats (always fresh) for ``ids`` and catalog rows (in-process cache, filled on a
        miss, kept ``catalog_ttl_s``) for ``ids`` and ``catalog_also``, in ONE round trip."""
        now = time.monotonic()
        catalog: dict[str, dict[str, Any]] = {}
        misses = []
        for i in dict.fromkeys([*ids, *catalog_also]):
            hit = self._catalog.get(i)
            if hit is not None and now - hit[0] < self.catalog_ttl_s:
                catalog[i] = hit[1]
            else:
                misses.append(i)
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([self.keys.item_features(i) for i in ids]) if ids else pipe.echo(b"")
        if misses:
            pipe.mget([self.keys.item_catalog(i) for i in misses])
        res = pipe.execute()
        stats = [_decode(r) for r in res[0]] if ids else []
        if misses:
            for item, raw in zip(misses, res[1], strict=True):
                row = _decode(raw)
                if row is not None:
                    catalog[item] = row
                    self._catalog[item] = (now, row)
            if len(self._catalog) > self.catalog_max:
                self._catalog.clear()  # crude bound; rows refill on demand
        return stats, catalog
