"""The columnar feature path the scorer uses: ``assemble_columns`` -> ``FeatureBatch`` ->
``FeatureHasher.encode_batch`` / ``HeuristicRanker``, and the item rows held in scorer memory
(``RedisStore.item_columns``, ``online.item_table``) against a real redis-server."""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import pytest
import redis

from features.decay import decay_exponent
from features.ranking_features import (
    DENSE,
    CatalogPart,
    ItemColumns,
    RetrievalColumns,
    assemble_batch,
    assemble_columns,
    catalog_part,
    hash_token,
    item_row,
    stats_part,
)
from models.deepfm import FeatureHasher
from online import retrieval as R
from online import scorer_metrics as metrics
from online.candidates import merge_candidates
from online.item_table import ItemTable
from online.ranking import HeuristicRanker
from online.rerank import Exploration
from online.store import RedisStore, UserState
from proto import codecs
from proto.keys import Keys

T = 1_750_000_000_000
H = 3600.0


def _batch():
    rng = np.random.default_rng(5)
    ids = [f"i{j}" for j in range(40)]
    catalogs = [None if j % 7 == 0 else {"category": f"c{j % 4}", "brand": f"b{j % 3}",
                                          "price": float(rng.uniform(1, 90)), "active": j % 9 != 0}
                for j in range(40)]
    stats = [None if j % 5 == 0 else {"views": decay_exponent(T, H) + float(rng.normal(3, 2)),
                                       "ctr": float(rng.uniform(0, 0.1)), "cvr": 0.04, "cat": "cs",
                                       "brand": "bs", "price": 5.0} for j in range(40)]
    retrievals = [{"covisit": 0.5} if j % 2 else {"popular": 0.2, "top_sellers": 0.9, "ann": 0.3}
                  for j in range(40)]
    kw = dict(item_ids=ids, retrievals=retrievals,
              user_features={"pref": {"c1": 0.7, "c2": 0.3}, "price_mean": 20.0,
                             "counts": {"view": 9, "click": 2}, "country": "DE"},
              session_affinity={"c2": 1.0}, last_viewed=frozenset({"i3", "i4"}),
              context={"surface": "home", "device": "ios", "country": "FR", "user_id": "u7"},
              now_ms=T + 60_000,
              half_life_s=H)
    return catalogs, stats, kw


def test_columns_follow_the_feature_definitions():
    catalogs, stats, kw = _batch()
    rows = assemble_batch(catalogs=catalogs, item_stats=stats, **kw)
    now_exp = decay_exponent(kw["now_ms"], H)
    for j, f in enumerate(rows):
        cat, st = catalogs[j] or {}, stats[j] or {}
        category = cat.get("category") or st.get("cat") or ""
        price = cat.get("price") or st.get("price") or 0.0
        assert f["category"] == category and f["country"] == "DE" and f["device"] == "ios"
        assert f["user_id"] == "u7"  # the request's shopper, on every item's row
        assert f["u_cat_pref"] == {"c1": 0.7, "c2": 0.3}.get(category, 0.0)
        assert f["s_cat_aff"] == (1.0 if category == "c2" else 0.0)
        assert f["popular"] == (0.9 if j % 2 == 0 else 0.0) and f["n_sources"] == (3 if j % 2 == 0 else 1)
        views = st.get("views")
        assert f["log_views"] == pytest.approx(0.0 if views is None else math.log1p(2 ** (views - now_exp)))
        assert f["item_ctr"] == st.get("ctr", 0.02)
        assert f["log_price"] == pytest.approx(math.log1p(price))
        assert f["price_vs_user"] == pytest.approx(math.log(price / 20.0) if price else 0.0)
        assert f["log_user_events"] == pytest.approx(math.log1p(11))
        assert f["in_session"] == (1.0 if f["item_id"] in ("i3", "i4") else 0.0)
        assert list(f) == ["item_id", "category", "brand", "surface", "device", "country", "user_id", *DENSE]


def _columns_kw(kw: dict) -> dict:
    """The dict path's keyword arguments for ``assemble_columns`` (retrieval as columns)."""
    out = {k: v for k, v in kw.items() if k != "retrievals"}
    return {**out, "retrieval": RetrievalColumns.from_mappings(kw["retrievals"])}


def test_encode_batch_and_heuristic_match_the_dict_path():
    catalogs, stats, kw0 = _batch()
    kw = _columns_kw(kw0)
    rows_in = [item_row(c, s) for c, s in zip(catalogs, stats, strict=True)]
    batch = assemble_columns(items=ItemColumns.from_rows(rows_in), **kw)
    rows = batch.rows()
    assert rows == assemble_batch(catalogs=catalogs, item_stats=stats, **kw0)
    sp_b, dn_b = FeatureHasher().encode_batch(batch)
    sp_d, dn_d = FeatureHasher().encode(rows)
    np.testing.assert_array_equal(sp_b, sp_d)
    np.testing.assert_array_equal(dn_b, dn_d)
    np.testing.assert_allclose(HeuristicRanker().predict(batch), HeuristicRanker().predict(rows))
    table = ItemTable()  # the scorer's path: rows and precomputed hashes from the item table
    table.put(kw["item_ids"], [catalog_part(c) for c in catalogs], [stats_part(x) for x in stats], now=0.0)
    held = assemble_columns(items=table.gather(table.rows_of(kw["item_ids"])), **kw)
    assert held.hashes is not None and held.rows() == rows
    sp_t, dn_t = FeatureHasher().encode_batch(held)
    np.testing.assert_array_equal(sp_t, sp_d)
    np.testing.assert_array_equal(dn_t, dn_d)
    empty = assemble_columns(**_columns_kw({**kw0, "item_ids": [], "retrievals": []}),
                             items=ItemColumns.from_rows([]))
    assert len(empty) == 0 and HeuristicRanker().predict(empty).shape == (0, 3)


def test_item_row_prefers_catalog_and_falls_back_to_stats():
    r = item_row({"category": "c", "price": 3.0, "active": False}, {"cat": "x", "brand": "y"})
    assert (r.category, r.brand, r.price, r.ctr, r.cvr, r.active) == ("c", "y", 3.0, 0.02, 0.05, False)
    assert math.isnan(r.views)
    neutral = item_row(None, None)
    assert neutral.active and neutral.price == 0.0 and math.isnan(neutral.views)


def _row(store: RedisStore, item: str) -> dict:
    cols = store.item_columns([item])
    return {"category": cols.category[0], "price": cols.price[0], "ctr": cols.ctr[0],
            "active": bool(cols.active[0]), "views": cols.views[0],
            "hashes": {k: int(v[0]) for k, v in (cols.hashes or {}).items()}}


def test_item_rows_are_held_in_memory_and_refreshed_after_their_ttl(settings, redis_client):
    k = Keys(settings.redis_prefix)
    redis_client.set(k.item_catalog("a"), codecs.encode({"category": "c1", "price": 10.0, "active": True}))
    redis_client.set(k.item_features("a"), codecs.encode({"views": 1.0, "ctr": 0.03}))
    store = RedisStore(settings.redis_url, k, catalog_ttl_s=0.6, item_stats_ttl_s=0.3)
    cols = store.item_columns(["a", "unknown", "a"])
    assert list(cols.category) == ["c1", "", "c1"] and list(cols.ctr) == [0.03, 0.02, 0.03]
    assert math.isnan(cols.views[1]) and cols.active[1]  # unknown: the neutral row
    assert _row(store, "a")["hashes"] == {"item_id": hash_token("item_id", "a"),
                                          "category": hash_token("category", "c1"), "brand": 0}
    redis_client.set(k.item_features("a"), codecs.encode({"views": 1.0, "ctr": 0.09}))
    redis_client.set(k.item_catalog("a"), codecs.encode({"category": "c2", "price": 10.0, "active": False}))
    assert _row(store, "a")["ctr"] == 0.03  # within the stats TTL: from memory
    time.sleep(0.35)
    row = _row(store, "a")
    assert row["ctr"] == 0.09 and row["active"] and row["category"] == "c1"  # stats re-read only
    time.sleep(0.3)
    row = _row(store, "a")
    assert not row["active"] and row["hashes"]["category"] == hash_token("category", "c2")
    fresh = RedisStore(settings.redis_url, k, item_stats_ttl_s=0.0)
    redis_client.set(k.item_features("a"), codecs.encode({"views": 1.0, "ctr": 0.01}))
    assert _row(fresh, "a")["ctr"] == 0.01


def test_item_table_grows_while_readers_hold_rows():
    table = ItemTable(capacity=2)
    parts = [CatalogPart(f"c{j % 3}", "", float(j), True) for j in range(50)]
    for j in range(0, 50, 5):
        ids = [f"i{x}" for x in range(j, j + 5)]
        table.put(ids, parts[j:j + 5], [None] * 5, now=1.0)
        rows = table.rows_of(["i0", *ids])
        cols = table.gather(rows)
        assert list(cols.price) == [0.0, *map(float, range(j, j + 5))]
    assert len(table) == 50 and table.rows_of(["nope"])[0] == -1
    stale_cat, stale_stats = table.stale(table.rows_of(["i3", "nope"]), 1.5, cat_ttl_s=1.0, stats_ttl_s=0.2)
    assert list(stale_cat) == [False, True] and list(stale_stats) == [True, True]


def test_shared_lists_are_cached_for_their_ttl(settings, redis_client):
    k = Keys(settings.redis_prefix)
    redis_client.zadd(k.popular(), {"p1": 2.0, "p2": 1.0})
    store = RedisStore(settings.redis_url, k, list_ttl_s=0.3)
    assert store.popular(5) == [("p1", 2.0), ("p2", 1.0)]
    redis_client.zadd(k.popular(), {"p3": 3.0})
    assert store.popular(5)[0][0] == "p1"
    time.sleep(0.35)
    assert store.popular(5)[0] == ("p3", 3.0)


def test_retrieval_reads_every_missed_shared_list_in_one_round_trip(settings, redis_client):
    """The sources' shared lists (co-visitation of each viewed item, trending per preferred
    category, popular, new items) are read in ONE Redis round trip, with the same results as
    when each source reads for itself; a failing prefetch leaves the sources to read."""
    k = Keys(settings.redis_prefix)
    for j, item in enumerate(("v1", "v2")):
        redis_client.zadd(k.covisit(item), {f"c{j}{n}": float(n) for n in range(4)})
    redis_client.zadd(k.trending("shoes"), {"t1": 3.0, "t2": 1.0})
    redis_client.zadd(k.trending("bags"), {"t3": 2.0})
    redis_client.zadd(k.popular(), {"p1": 2.0, "p2": 1.0})
    redis_client.zadd(k.new_items(), {"n1": 5.0})
    state = UserState({"items": ["v1", "v2"], "ver": 1}, None, frozenset(), None)
    q = R.Query("u1", state, ["shoes", "bags"])

    def run(prefetch: bool, store: RedisStore) -> tuple[list, int]:
        trips = 0
        real = store._roundtrip

        def counted(*commands, timeout_s=None):
            nonlocal trips
            trips += 1
            return real(*commands, timeout_s=timeout_s)
        store._roundtrip = counted  # type: ignore[method-assign]
        sources: list[R.Source] = [R.CovisitSource(store), R.TrendingSource(store),
                                   R.NewItemsSource(store), R.PopularSource(store)]
        return R.retrieve(sources, q, store.prefetch if prefetch else None), trips

    alone, trips_alone = run(False, RedisStore(settings.redis_url, k, list_ttl_s=60))
    together, trips_together = run(True, RedisStore(settings.redis_url, k, list_ttl_s=60))
    assert [name for name, _ in together] == ["covisit", "trending", "new_items", "popular"]
    assert together == alone and trips_alone == 4 and trips_together == 1

    class Broken(R.PopularSource):
        def lists(self, q: R.Query) -> list:
            return [("no-such-list", "", 1)]
    store = RedisStore(settings.redis_url, k, list_ttl_s=60)
    errors = metrics.child(metrics.SOURCE_ERRORS, "prefetch")
    before = errors._value.get()
    assert R.retrieve([Broken(store)], q, store.prefetch) == [("popular", [("p1", 2.0), ("p2", 1.0)])]
    assert errors._value.get() == before + 1


def test_a_full_item_table_evicts_the_least_recently_used_rows(settings, redis_client):
    """At ``max_items`` the table keeps the rows requests used most recently (3/4 of the
    bound, less what is being read); evicted rows are read again, right, when next used."""
    k = Keys(settings.redis_prefix)
    for j in range(150):
        redis_client.set(k.item_catalog(f"i{j}"), codecs.encode({"category": f"c{j % 7}", "price": float(j)}))
    store = RedisStore(settings.redis_url, k, max_items=100, catalog_ttl_s=3600, item_stats_ttl_s=3600)
    ids = [f"i{j}" for j in range(150)]
    assert list(store.item_columns(ids[:80]).price) == [float(j) for j in range(80)]
    time.sleep(0.01)
    store.item_columns(ids[40:50])  # used again: these must survive the eviction
    evictions = metrics.ITEM_EVICTIONS._value.get()
    cols = store.item_columns(ids[100:140])  # 80 + 40 > 100: make room
    assert list(cols.price) == [float(j) for j in range(100, 140)]
    assert len(store.table) == 75 and metrics.ITEM_EVICTIONS._value.get() == evictions + 45
    held = store.table.rows_of(ids) >= 0
    assert held[40:50].all() and held[100:140].all() and held[:80].sum() == 35
    assert [c for c in store.table.gather(store.table.rows_of(ids[40:50])).category] == \
        [f"c{j % 7}" for j in range(40, 50)]
    assert list(store.item_columns(ids[:80]).price) == [float(j) for j in range(80)]  # re-read
    # a request whose own held rows do not all fit what is kept: the evicted ones are read again
    store = RedisStore(settings.redis_url, k, max_items=100, catalog_ttl_s=3600, item_stats_ttl_s=3600)
    store.item_columns(ids[:75])
    assert list(store.item_columns(ids[15:105]).price) == [float(j) for j in range(15, 105)]
    assert len(store.table) <= 100


def test_a_dropped_redis_connection_fails_one_read_then_reconnects(settings, redis_client):
    """The store keeps one raw connection per thread: when Redis drops it, that read fails
    (the request degrades) and the next one reconnects, with no half-read reply left over."""
    k = Keys(settings.redis_prefix)
    redis_client.set(k.session("u1"), codecs.encode({"items": ["a", "b"], "ver": 3}))
    redis_client.sadd(k.user_purchased("u1"), "z")
    store = RedisStore(settings.redis_url, k, list_ttl_s=0.0)
    assert store.user_state("u1").last_viewed == ["a", "b"]
    redis_client.client_kill_filter(_type="normal", skipme=True)
    with contextlib.suppress(redis.ConnectionError):  # the killed connection: this one degrades
        store.user_state("u1")
    for _ in range(3):
        state = store.user_state("u1")
        assert state.last_viewed == ["a", "b"] and state.purchased == {"z"}
        assert state.session_version == 3 and store.popular(3) == []


def test_preload_reads_the_most_viewed_items_first(settings, redis_client):
    k = Keys(settings.redis_prefix)
    for j in range(5):
        redis_client.set(k.item_catalog(f"p{j}"), codecs.encode({"category": f"c{j}", "price": 1.0}))
    redis_client.zadd(k.popular(), {f"p{j}": float(j) for j in range(5)})
    store = RedisStore(settings.redis_url, k)
    assert store.preload(3, batch=2) == 3
    assert set(store.table.index) == {"p4", "p3", "p2"}  # the three most viewed
    reads: list = []
    real = store._read
    store._read = lambda c, s, now: reads.append((c, s)) or real(c, s, now)  # type: ignore[method-assign]
    assert list(store.item_columns(["p4", "p2"]).category) == ["c4", "c2"] and not reads
    assert list(store.item_columns(["p0"]).category) == ["c0"] and reads == [(["p0"], ["p0"])]


def test_merge_keeps_every_source_score_in_priority_order():
    cands = merge_candidates([
        ("covisit", [("a", 4.0), ("b", 2.0), ("x", 9.0)]),
        ("ann", [("b", 0.9), ("c", 0.5), ("b", 0.95)]),  # listed twice: the better score counts
        ("popular", [("d", 1.0), ("a", 1.0)]),
        ("empty", []),
    ], limit=3, exclude={"x"})
    assert cands.item_ids == ["a", "b", "c"]  # x excluded; d over the limit
    assert cands.sources == ("covisit", "ann", "popular")
    assert cands.sources_of(0) == ("covisit", "popular") and cands.sources_of(2) == ("ann",)
    # min-max into (0, 1] over the source's whole list (the excluded x included)
    np.testing.assert_allclose(cands.score("covisit"), [0.05 + 0.95 * 2 / 7, 0.05, 0.0])
    np.testing.assert_allclose(cands.score("ann"), [0.0, 1.0, 0.05])
    r = cands.retrieval()
    np.testing.assert_allclose(r.popular, [1.0, 0.0, 0.0])
    np.testing.assert_allclose(r.n_sources, [2, 2, 1])
    assert cands.take([2, 0]).item_ids == ["c", "a"]
    policy = Exploration(pool_sources=("ann",), niche_log_views=1.0)
    views = np.array([5.0, 5.0, 0.5])
    assert policy.pool_mask(cands, views).tolist() == [
        policy.in_pool(cands.sources_of(j), views[j]) for j in range(3)] == [False, True, True]


def test_merge_gives_each_source_a_share_when_they_offer_more_than_the_limit():
    """Sources offering more than the limit: a low-priority source (new items) keeps its
    proportional share instead of being crowded out by the ones before it."""
    covisit = [(f"a{j}", float(100 - j)) for j in range(80)]
    ann = [(f"b{j}", float(50 - j)) for j in range(40)] + [("a0", 1.0)]
    new = [(f"n{j}", float(10 - j)) for j in range(10)]
    cands = merge_candidates([("covisit", covisit), ("ann", ann), ("new_items", new)],
                             limit=40, exclude={"a1"})
    ids = cands.item_ids
    assert len(ids) == 40 and len(set(ids)) == 40 and "a1" not in ids
    first = [cands.sources_of(j)[0] for j in range(40)]
    # shares of 40 in proportion to 80 / 41 / 10 rows offered: 24 / 12 / 3, the rest by priority
    assert (first.count("covisit"), first.count("ann"), first.count("new_items")) == (25, 12, 3)
    assert [i for i in ids if i.startswith("n")] == ["n0", "n1", "n2"]  # each source's best
    assert cands.sources_of(ids.index("a0")) == ("covisit", "ann")
    everything = merge_candidates([("covisit", covisit[:20]), ("new_items", new)], limit=40)
    assert everything.item_ids == [i for i, _ in covisit[:20] + new]  # all fit: priority order
