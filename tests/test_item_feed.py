"""The item changelog keeps the scorer's in-memory item rows fresh (``online.item_feed``):
changed rows are re-read on their next use, unchanged rows are not re-read at all while the
follower keeps up, and rows age out by their TTLs when it does not. Real redis-server."""

from __future__ import annotations

import time

import redis

from features.ranking_features import StatsPart
from features.writes import Write
from online.item_feed import ItemChangeFollower
from online.item_table import Coverage, ItemTable
from online.store import RedisStore
from proto import codecs
from proto.keys import Keys
from recsys.embedded.redis_server import free_port
from streams.redis_sink import apply_writes


def _set_ctr(client: redis.Redis, k: Keys, item: str, ctr: float, notify: bool = False) -> None:
    writes = [Write("set", k.item_features(item), codecs.encode({"ctr": ctr}))]
    if notify:
        writes.append(Write("notify", k.item_changelog(), item))
    apply_writes(client, writes)


def _ctr(store: RedisStore, *items: str) -> list[float]:
    return [float(x) for x in store.item_columns(list(items)).ctr]


def test_item_changelog_keeps_rows_fresh_without_ttl(settings, redis_client):
    """The dataflow's sink announces changed items after writing them; the follower
    invalidates those rows, so a long-TTL table still serves the new stats."""
    k = Keys(settings.redis_prefix)
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=3600, item_stats_ttl_s=3600)
    for item in ("a", "b"):
        _set_ctr(redis_client, k, item, 0.01)
    assert _ctr(store, "a", "b") == [0.01, 0.01]
    follower = ItemChangeFollower(redis.Redis.from_url(settings.redis_url), k.item_changelog(),
                                  store, block_ms=200)
    follower.poll_once()  # nothing new yet ("$": from now on)
    apply_writes(redis_client, [
        Write("set", k.item_features("a"), codecs.encode({"ctr": 0.07})),
        Write("notify", k.item_changelog(), "a"), Write("notify", k.item_changelog(), "a")])
    assert _ctr(store, "a", "b") == [0.01, 0.01]  # not told yet: memory
    assert follower.poll_once() == 1  # one entry, "a" once
    assert _ctr(store, "a", "b") == [0.07, 0.01]  # a re-read, b from memory


def _reads(part: str) -> float:
    from online import scorer_metrics as metrics

    return metrics.child(metrics.ITEM_READS, part)._value.get()


def test_the_follower_rereads_changed_hot_rows_off_the_request_path(settings, redis_client):
    """A changed row that a request used lately is re-read by the follower itself, so the next
    request finds the new stats without a Redis read; a changed cold row waits for its next
    use; without refresh (hot_s 0) every changed row is read on the request path."""
    k = Keys(settings.redis_prefix)
    for hot_s, want_follower_reads in ((60.0, 1), (0.0, 0)):
        store = RedisStore(settings.redis_url, k, catalog_ttl_s=3600, item_stats_ttl_s=3600)
        for item in ("hot", "cold"):
            _set_ctr(redis_client, k, item, 0.01)
        store.item_columns(["cold"])
        store.table.touch(store.table.rows_of(["cold"]), time.monotonic() - 120)  # used 2 min ago
        assert _ctr(store, "hot") == [0.01]  # used now
        follower = ItemChangeFollower(redis.Redis.from_url(settings.redis_url), k.item_changelog(),
                                      store, block_ms=200, refresh_hot_s=hot_s)
        follower.poll_once()  # pins the place in the log
        _set_ctr(redis_client, k, "hot", 0.07, notify=True)
        _set_ctr(redis_client, k, "cold", 0.08, notify=True)
        before = _reads("stats")
        assert follower.poll_once() == 2
        assert _reads("stats") - before == want_follower_reads  # the follower's own read
        before = _reads("stats")
        assert _ctr(store, "hot") == [0.07]
        assert _reads("stats") - before == 1 - want_follower_reads  # the request's read, if any
        assert _ctr(store, "cold") == [0.08]  # invalidated, read on this use


def test_rows_the_follower_covers_outlive_their_ttl_and_age_out_when_it_stops(settings, redis_client):
    """While the follower keeps up, a row nobody announced a change of is not re-read, however
    old; once it stops, the TTL bounds the row's age again."""
    k = Keys(settings.redis_prefix)
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=1.0, item_stats_ttl_s=1.0)
    _set_ctr(redis_client, k, "a", 0.01)
    _set_ctr(redis_client, k, "b", 0.01)
    assert _ctr(store, "b") == [0.01]  # read before the follower started: not covered
    follower = ItemChangeFollower(redis.Redis.from_url(settings.redis_url), k.item_changelog(),
                                  store, block_ms=100).start()
    try:
        assert _ctr(store, "a") == [0.01]
        _set_ctr(redis_client, k, "a", 0.05)  # written, never announced (what no feed would do)
        _set_ctr(redis_client, k, "b", 0.05)
        time.sleep(1.5)
        assert _ctr(store, "a", "b") == [0.01, 0.05]  # a covered: memory; b aged out: re-read
        _set_ctr(redis_client, k, "a", 0.06, notify=True)
        deadline = time.monotonic() + 5
        while _ctr(store, "a") != [0.06] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _ctr(store, "a") == [0.06]  # announced: re-read
    finally:
        follower.stop()
    time.sleep(0.3)  # the follower's last poll is over
    _set_ctr(redis_client, k, "a", 0.08)
    time.sleep(1.2)
    assert _ctr(store, "a") == [0.08]  # nobody vouches for it any more: the TTL applies


def test_a_follower_that_loses_redis_stops_vouching(settings, redis_client):
    k = Keys(settings.redis_prefix)
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=0.5, item_stats_ttl_s=0.5)
    store.watch(Coverage(since=0.0, until=time.monotonic() + 60))  # a follower vouched, then ...
    _set_ctr(redis_client, k, "a", 0.01)
    assert _ctr(store, "a") == [0.01]
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    follower = ItemChangeFollower(dead, k.item_changelog(), store, block_ms=100).start()  # ... lost it
    try:
        _set_ctr(redis_client, k, "a", 0.02)
        time.sleep(0.8)
        assert _ctr(store, "a") == [0.02]
    finally:
        follower.stop()


def _calls(client: redis.Redis, command: str) -> int:
    """How many times redis-server has run ``command`` (INFO commandstats)."""
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_changelog_trimmed_past_the_follower_invalidates_every_row(settings, redis_client):
    k = Keys(settings.redis_prefix)
    log = k.item_changelog()
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=3600, item_stats_ttl_s=3600)
    _set_ctr(redis_client, k, "a", 0.01)
    _set_ctr(redis_client, k, "b", 0.01)
    assert _ctr(store, "a", "b") == [0.01, 0.01]
    follower = ItemChangeFollower(redis.Redis.from_url(settings.redis_url), log, store, block_ms=100,
                                  maxlen=3)
    follower.poll_once()  # pinned at the (empty) log's end
    for _ in range(2):  # changes of "x"
        redis_client.xadd(log, {"ids": b"\x91\xa1x"})
    xlen_calls = _calls(redis_client, "xlen")
    assert follower.poll_once() == 2 and _ctr(store, "a", "b") == [0.01, 0.01]  # never trimmed
    assert _calls(redis_client, "xlen") == xlen_calls  # a read shorter than maxlen proves it
    _set_ctr(redis_client, k, "b", 0.03)  # its announcement ...
    redis_client.xadd(log, {"ids": b"\x91\xa1b"})
    for _ in range(3):
        redis_client.xadd(log, {"ids": b"\x91\xa1x"})
    redis_client.xtrim(log, maxlen=3, approximate=False)  # ... is trimmed before the follower reads it
    assert [f[b"ids"] for _, f in redis_client.xrange(log)] == [b"\x91\xa1x"] * 3
    follower.poll_once()
    assert _ctr(store, "a", "b") == [0.01, 0.03]  # every row re-read, so b is current


def test_an_invalidation_during_a_read_is_not_lost():
    table = ItemTable()
    table.put(["a"], [None], [StatsPart("", "", 0.0, 1.0, 0.01, 0.05)], now=10.0)
    read_began = 20.0  # a request starts re-reading "a" ...
    table.invalidate(["a"], now=20.5)  # ... the changelog names it meanwhile ...
    table.put(["a"], [False], [StatsPart("", "", 0.0, 1.0, 0.02, 0.05)], now=read_began)
    _, stale_stats = table.stale(table.rows_of(["a"]), 21.0, 3600.0, 3600.0)
    assert stale_stats[0]  # ... so what it read may be older than the change: read again


def test_coverage_counts_only_for_rows_read_while_watched_and_not_invalidated():
    table = ItemTable()
    parts = [StatsPart("", "", 0.0, 1.0, 0.01, 0.05)] * 3
    table.put(["before", "after", "changed"], [None] * 3, parts, now=10.0)
    table.put(["after", "changed"], [False] * 2, parts[:2], now=30.0)
    table.invalidate(["changed"], now=40.0)
    rows = table.rows_of(["before", "after", "changed", "unknown"])
    _, stale = table.stale(rows, 100.0, 3600.0, 50.0, Coverage(since=20.0, until=99.0))
    assert stale.tolist() == [True, False, True, True]
    _, stale = table.stale(rows, 100.0, 3600.0, 50.0, Coverage())  # nobody vouches
    assert stale.tolist() == [True, True, True, True]


def test_an_invalidation_during_an_eviction_copy_is_not_lost(settings, redis_client):
    k = Keys(settings.redis_prefix)
    for j in range(8):
        _set_ctr(redis_client, k, f"i{j}", 0.01)
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=3600, item_stats_ttl_s=3600, max_items=8)
    assert _ctr(store, *(f"i{j}" for j in range(8))) == [0.01] * 8
    old = store.table
    copy = old.keep_recent

    def copy_then_invalidate(n: int) -> ItemTable:
        kept = copy(n)  # the copy is made; the changelog names i7 before the swap
        _set_ctr(redis_client, k, "i7", 0.09)
        store.invalidate(["i7"])
        return kept
    old.keep_recent = copy_then_invalidate  # type: ignore[method-assign]
    _set_ctr(redis_client, k, "new", 0.01)
    assert _ctr(store, "new", "i7") == [0.01, 0.01]  # reading "new" evicts (8 + 1 > 8) ...
    assert store.table is not old and len(store.table) < 8
    assert _ctr(store, "i7") == [0.09]  # ... and the kept i7 is re-read on its next use
