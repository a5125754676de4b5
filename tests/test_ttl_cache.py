"""The scorer's cache of shared lists (``online.store.TtlCache``): it holds what the last
``ttl_s`` seconds read, not everything ever read."""

from __future__ import annotations

import gc

from online.store import TtlCache


def test_expired_entries_are_dropped_as_new_ones_come() -> None:
    """1,000 keys a second for 20 s with a 1 s TTL: the cache holds about the last second's
    keys (each put drops up to two expired ones), not the 20,000 ever put; fresh values are
    served, expired ones are not."""
    cache: TtlCache[list[int]] = TtlCache(ttl_s=1.0, max_entries=100_000)
    for j in range(20_000):
        cache.put(("covisit", j), [j], now=j / 1000.0)
    now = 19_999 / 1000.0
    assert len(cache) <= 1_100, len(cache)
    assert cache.get(("covisit", 19_999), now) == [19_999]
    assert cache.get(("covisit", 19_100), now) == [19_100]  # 0.9 s old
    assert cache.get(("covisit", 18_000), now) is None  # 2 s old
    assert cache.get(("covisit", 0), now) is None


def test_a_refreshed_key_moves_to_the_back_and_max_entries_is_a_hard_cap() -> None:
    cache: TtlCache[str] = TtlCache(ttl_s=60.0, max_entries=3)
    for key, now in (("a", 0.0), ("b", 1.0), ("c", 2.0)):
        cache.put(key, key.upper(), now)
    cache.put("a", "A2", 3.0)  # refreshed: now the newest
    cache.put("d", "D", 4.0)  # full: the oldest ("b") goes, not "a"
    assert len(cache) == 3
    assert cache.get("b", 4.0) is None
    assert cache.get("a", 4.0) == "A2" and cache.get("c", 4.0) == "C" and cache.get("d", 4.0) == "D"


def test_dropped_values_are_freed() -> None:
    """What expires is released (no reference kept): the memory of a worker that reads many
    distinct lists stays bounded by what one TTL holds."""
    cache: TtlCache[list[str]] = TtlCache(ttl_s=1.0, max_entries=1_000_000)
    gc.collect()
    before = len(gc.get_objects())
    for j in range(50_000):
        cache.put(j, [f"i{j}"], now=j / 1000.0)  # 50 s of puts at 1,000 a second
    gc.collect()
    assert len(gc.get_objects()) - before < 5_000
