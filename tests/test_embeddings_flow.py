"""The embeddings dataflow: session windows, cold-start blending, the item tower, and the
freshness of new / deactivated catalog items in an HNSW replica (real broker + redis-server,
the flow in a subprocess via ``recsys stream --flow embeddings``, under steady event load)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from core import kafka
from core.settings import Settings
from features.embedding_store import EmbeddingStore
from features.events import make_event
from features.state_updates import CatalogRow
from models.registry import ModelRegistry
from online.ann.follower import IndexFollower
from proto import events_pb2
from proto.keys import Keys
from streams.coalesce import Group
from streams.emb_vectors import blend, blend_weight, group_centroids, hashed_direction, prior_vector
from streams.embeddings import (
    I2V,
    TOWER,
    CatalogInfo,
    EmbConfig,
    EmbeddingModel,
    Segment,
    session_close,
    session_step,
    unit,
)
from streams.embeddings_flow import EmbedModel, TowerEmbedder
from tests.conftest import ROOT, settings_env

# --- pure logic ---------------------------------------------------------------------------


def test_cold_start_blend_is_smooth_and_ends_at_the_threshold() -> None:
    rng = np.random.default_rng(3)
    prior, learned = (unit(rng.standard_normal(32)) for _ in range(2))
    assert prior is not None and learned is not None
    m = 20
    vecs = [blend(prior, learned, n, m) for n in range(m + 3)]
    assert all(v is not None and abs(float(np.linalg.norm(v)) - 1) < 1e-5 for v in vecs)
    to_learned = [float(v @ learned) for v in vecs if v is not None]
    np.testing.assert_allclose(vecs[0], prior, atol=1e-6)  # no interactions: the prior
    for n in (m, m + 1, m + 2):  # at the threshold and after: the learned vector alone
        np.testing.assert_allclose(vecs[n], learned, atol=1e-6)
    assert all(b > a for a, b in itertools.pairwise(to_learned[: m + 1]))
    steps = [float(np.arccos(np.clip(a @ b, -1, 1))) for a, b in itertools.pairwise(vecs)]  # type: ignore[operator]
    assert max(steps) < 0.2  # smooth: no jump between consecutive counts (radians)
    assert [blend_weight(n, 4) for n in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert blend(None, learned, 0, m) is not None and blend(prior, None, 5, m) is not None


def test_centroids_are_weighted_and_the_prior_averages_category_and_brand() -> None:
    e = np.eye(4, dtype=np.float32)
    vecs = np.stack([e[0], e[0], e[1], e[2]])
    cents = group_centroids(["a", "a", "a", "b"], vecs, [1.0, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(cents["a"], unit(2 * e[0] + 0.5 * e[1]), atol=1e-6)
    np.testing.assert_allclose(cents["b"], e[2])
    np.testing.assert_allclose(prior_vector(e[0], e[1]), unit(e[0] + e[1]), atol=1e-6)
    np.testing.assert_allclose(prior_vector(None, e[3]), e[3])
    assert prior_vector(None, None) is None
    np.testing.assert_array_equal(hashed_direction("c:x", 8), hashed_direction("c:x", 8))


def test_session_windows_follow_the_session_rule() -> None:
    cfg = EmbConfig(emit_items=3, overlap=2, gap_s=60)
    st, out = None, []
    for i, item in enumerate("abcdefg"):
        st, segs = session_step(cfg, st, event_id=f"e{i}", user_id="u", ts_ms=1000 * (i + 1),
                                etype="view", item_id=item)
        out += segs
    assert out == [Segment(("a", "b", "c"), 0), Segment(("b", "c", "d", "e", "f"), 2)]
    assert st is not None
    same, segs = session_step(cfg, st, event_id="e6", user_id="u", ts_ms=7000, etype="view",
                              item_id="g")  # duplicate event id: ignored
    assert same is st and segs == []
    st, segs = session_step(cfg, st, event_id="x", user_id="u", ts_ms=7500, etype="add_to_cart",
                            item_id="g")
    assert segs == [] and st.unsent == 1  # not a view/click: nothing new to learn from
    st, segs = session_step(cfg, st, event_id="e9", user_id="u", ts_ms=7500 + 61_000,
                            etype="view", item_id="h")  # after the gap: a new session
    assert segs == [Segment(("e", "f", "g"), 2)] and st.unsent == 1
    assert session_close(cfg, st) == []  # one item alone has no pairs


def _row(item: str, cat: str, brand: str, active: bool = True, title: str = "") -> CatalogRow:
    return CatalogRow(item, title or f"{cat} {brand} thing", cat, brand, 20.0, 4.0, active, 0, 0)


def _info(r: CatalogRow) -> CatalogInfo:
    return CatalogInfo(r.category, r.brand, r.price, r.title, r.active)


def test_model_cold_start_warms_up_and_deactivation_deletes() -> None:
    cfg = EmbConfig(dim=16, min_interactions=5, batch_sessions=8, centroid_refresh_ms=0, seed=1)
    m = EmbeddingModel(cfg)
    cats = {c: [f"{c}{j}" for j in range(6)] for c in "ABCD"}
    for c, items in cats.items():
        for j, item in enumerate(items):
            ops = m.upsert(item, _info(_row(item, c, f"{c}-b{j % 2}")), 1, 0)
            assert [(o.target, o.op, o.kind) for o in ops] == [(I2V, "put", "cold")]
    rng = np.random.default_rng(0)
    warmed: list[str] = []
    for step in range(100):
        for items in cats.values():
            m.add(Segment(tuple(rng.choice(items, 6)), 0), step)
        _ops, rep = m.fit(step)
        warmed += rep.warmed
    assert sorted(warmed) == sorted(i for items in cats.values() for i in items)  # once each
    ops = m.upsert("newA", _info(_row("newA", "A", "A-b0")), 100, 7)
    assert [(o.op, o.kind, o.ingest_ms) for o in ops] == [("put", "cold", 7)]
    new = ops[0].vectors[0]
    np.testing.assert_allclose(new, prior_vector(m.cat_centroids["A"], m.brand_centroids["A-b0"]),
                               atol=1e-6)
    others = max(float(new @ m.cat_centroids[c]) for c in "BCD")
    assert float(new @ m.cat_centroids["A"]) > 0.8 and float(new @ m.cat_centroids["A"]) > others + 0.3
    kinds = []
    for step in range(4):  # interactions 2, 4, 6, 8 -> blend, blend, learned
        m.add(Segment(("A0", "newA", "A1", "newA"), 0), 200 + step)
        ops, rep = m.fit(200 + step)
        kinds += [o.kind for o in ops if "newA" in o.ids]
        warmed += rep.warmed
    assert kinds[:2] == ["blend", "blend"] and kinds[-1] == "learned" and warmed[-1] == "newA"
    ops = m.upsert("newA", _info(_row("newA", "A", "A-b0", active=False)), 300, 0)
    assert [(o.op, o.ids) for o in ops] == [("del", ("newA",))]
    assert m.upsert("newA", _info(_row("newA", "A", "A-b0", active=False)), 301, 0) == []
    m.add(Segment(("A0", "newA", "A1"), 0), 302)
    assert all("newA" not in o.ids for o in m.fit(302)[0])  # inactive: never re-added by training
    ops = m.upsert("newA", _info(_row("newA", "A", "A-b0")), 303, 0)
    assert [(o.op, o.ids) for o in ops] == [("put", ("newA",))]  # re-activated: written again
    assert ops[0].version > 303 - 1 and len({o.version for o in ops}) == 1


def test_item_tower_embeds_catalog_rows_of_the_promoted_model(tmp_path: Path) -> None:
    import torch

    from models.two_tower import TwoTower, TwoTowerConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    reg = ModelRegistry(tmp_path / "models")
    plain = TwoTower(TwoTowerConfig(n_items=10, dim=16)).save(tmp_path / "plain.pt")
    reg.promote("two_tower", reg.register("two_tower", plain, {}))
    tower = TowerEmbedder(tmp_path / "models", check_s=0.0)
    assert not tower.poll(time.time()) and not tower.usable  # no content features: not used
    content = TwoTower(TwoTowerConfig(n_items=10, dim=24, n_categories=8, n_brands=8,
                                      n_price_buckets=8, title_buckets=32))
    reg.promote("two_tower", reg.register("two_tower", content.save(tmp_path / "c.pt"), {}))
    logic = EmbedModel(EmbConfig(dim=16), None, tower, recovery=True)
    ops = logic.on_item(Group("model", [_row("s1", "shoes", "acme", title="red shoe"),
                                         _row("s2", "shoes", "acme", title="blue shoe"),
                                         _row("s3", "hats", "zed", active=False)]))[0]
    assert tower.usable and tower.space == "v2"
    tt = [o for o in ops if o.target == TOWER]
    assert [(o.op, o.ids, o.space) for o in tt] == [("put", ("s1", "s2"), "v2"),
                                                     ("del", ("s3",), "v2")]
    vecs = tt[0].vectors
    assert vecs is not None and vecs.shape == (2, 24)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert float(vecs[0] @ vecs[1]) > 0.5  # same category and brand, different titles
    assert {(o.target, o.op) for o in ops if o.target == I2V} == {(I2V, "put"), (I2V, "del")}
    snap = logic.snapshot()
    assert snap is not None
    again = EmbedModel(EmbConfig(dim=16), snap, TowerEmbedder(tmp_path / "models", 0.0), True)
    assert set(again.m.catalog) == {"s1", "s2", "s3"} and set(again.m.written.rows) == {"s1", "s2"}


# --- the dataflow: freshness under steady load ------------------------------------------------

CATS, PER_CAT, RATE = 4, 12, 300.0


def _catalog_item(item: str, cat: int, brand: str, active: bool = True) -> bytes:
    return events_pb2.ItemUpsert(item_id=item, title=f"thing {item}", category=f"c{cat}", brand=brand,
                                 price=10.0 + cat, rating=4.0, active=active,
                                 updated_ms=int(time.time() * 1000)).SerializeToString()


class Shoppers(threading.Thread):
    """Steady clickstream: ~RATE views/s; each shopper views 6-12 items of one category."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.s, self.stop, self.sent, self.rng = settings, threading.Event(), 0, np.random.default_rng(5)
        self.t0 = self.t1 = 0.0
        self.views: dict[str, int] = {}

    def run(self) -> None:
        p = kafka.producer(self.s)
        topic, rng, next_user = self.s.topic("clickstream"), self.rng, 0
        active: list[list] = []  # [user, category, views left]
        self.t0 = time.monotonic()
        while not self.stop.is_set():
            while len(active) < 20:
                active.append([f"u{next_user}", int(rng.integers(CATS)), int(rng.integers(6, 13))])
                next_user += 1
            for _ in range(3):
                shopper = active[int(rng.integers(len(active)))]
                item = f"i{shopper[1]}_{int(rng.integers(PER_CAT))}"
                p.produce(topic, key=shopper[0].encode(), value=make_event(
                    event_id=f"e{self.sent}", ts_ms=int(time.time() * 1000), user_id=shopper[0],
                    type=events_pb2.VIEW, item_id=item))
                self.sent += 1
                self.views[item] = self.views.get(item, 0) + 1
                shopper[2] -= 1
                if shopper[2] == 0:
                    active.remove(shopper)
            p.poll(0)
            time.sleep(max(0.0, self.t0 + self.sent / RATE - time.monotonic()))
        self.t1 = time.monotonic()
        p.flush(10)


def _purity(f: IndexFollower, item: str, cat: int, k: int = 8) -> float:
    """Share of an item's nearest catalog neighbours (in the replica) in its own category."""
    assert f.index is not None
    vec = f.index.get_vector(item)
    if vec is None:
        return -1.0
    hits = [h for h, _ in f.index.query(vec, k + 12) if h.startswith("i") and h != item][:k]
    return sum(h.startswith(f"i{cat}_") for h in hits) / max(1, len(hits))


def _wait(cond: Callable[[], bool], limit_s: float, what: str, poll_s: float = 0.005,
          proc: subprocess.Popen | None = None) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the dataflow exited with {proc.returncode}")
        if cond():
            return time.monotonic() - t0
        time.sleep(poll_s)
    raise AssertionError(f"{what}: not within {limit_s}s")


def test_new_items_are_retrievable_and_deactivated_ones_vanish_within_2s(settings, redis_client
                                                                           ) -> None:
    names = set(Settings.model_fields)
    s = settings.replace(session_gap_s=2.0,
                         **({"embeddings_metrics_port": 0} if "embeddings_metrics_port" in names else {}))
    dim = int(getattr(s, "embedding_dim", 64))
    p = kafka.producer(s)
    for c in range(CATS):
        for j in range(PER_CAT):
            p.produce(s.topic("catalog"), key=f"i{c}_{j}".encode(),
                      value=_catalog_item(f"i{c}_{j}", c, f"b{c}_{j % 3}"))
    assert p.flush(10) == 0
    f = IndexFollower(redis_client, Keys(prefix=s.redis_prefix), dim, registry=CollectorRegistry(),
                      block_ms=100).start()
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream", "--flow", "embeddings"],
                            cwd=ROOT, env=settings_env(s), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    load = Shoppers(s)
    catalog = [f"i{c}_{j}" for c in range(CATS) for j in range(PER_CAT)]
    try:
        _wait(lambda: f.index is not None and len(f.index) >= len(catalog), 30, "catalog vectors",
              0.05, proc)
        load.start()

        # warm-up: every item viewed more than cold_start_min_interactions times, then the
        # sessions closed (gap 2 s) and fitted: the catalog now has learned vectors only
        need = int(getattr(s, "cold_start_min_interactions", 20)) + 5
        _wait(lambda: min(load.views.get(i, 0) for i in catalog) >= need, 30, "warm-up load", 0.1,
              proc)
        time.sleep(s.session_gap_s + 1.0)

        def learned() -> bool:  # item2vec separated the categories (kNN in the replica)
            return float(np.mean([_purity(f, i, int(i[1])) for i in catalog])) >= 0.8

        warm_s = time.monotonic() - load.t0 + _wait(learned, 10, "learned category structure", 0.25)
        assert f.index is not None
        same_prior = [(f"i{c}_0", f"i{c}_3") for c in range(CATS)]  # same category and brand
        sims = [float(f.index.get_vector(a) @ f.index.get_vector(b)) for a, b in same_prior]
        assert max(sims) < 0.999, f"still identical cold-start priors: {sims}"
        new_lat, del_lat = [], []
        for k in range(8):
            item, cat = f"n{k}", k % CATS
            t0 = time.monotonic()
            p.produce(s.topic("catalog"), key=item.encode(), value=_catalog_item(item, cat, f"b{cat}_0"))
            p.flush(5)
            # visible = ANN returns it for its own vector AND its neighbourhood is its category
            _wait(lambda: _purity(f, item, cat) >= 0.75 and item in {  # noqa: B023
                h for h, _ in f.index.query(f.index.get_vector(item), 5)}, 5, f"new {item}")  # noqa: B023
            new_lat.append(time.monotonic() - t0)
            time.sleep(0.2)
        for k in range(8):
            item, cat = f"n{k}", k % CATS
            t0 = time.monotonic()
            p.produce(s.topic("catalog"), key=item.encode(),
                      value=_catalog_item(item, cat, f"b{cat}_0", active=False))
            p.flush(5)
            probe = f.index.get_vector(f"i{cat}_0")
            _wait(lambda: item not in f.index and item not in {  # noqa: B023
                h for h, _ in f.index.query(probe, 30)}, 5, f"deleted {item}")  # noqa: B023
            del_lat.append(time.monotonic() - t0)
            time.sleep(0.2)
        load.stop.set()
        load.join(15)
        rate = load.sent / max(1e-9, load.t1 - load.t0)
        store = EmbeddingStore(redis_client, Keys(prefix=s.redis_prefix))
        got = store.get("i0_0")
        print(f"\nwarm-up {warm_s:.1f}s, load {rate:.0f} events/s ({load.sent} events)")
        print("new item visible (s):", " ".join(f"{x:.3f}" for x in new_lat),
              f"p99 {np.percentile(new_lat, 99):.3f}")
        print("deactivated gone (s):", " ".join(f"{x:.3f}" for x in del_lat),
              f"p99 {np.percentile(del_lat, 99):.3f}")
        assert rate > 200, f"the load did not hold: {rate:.0f} events/s"
        assert np.percentile(new_lat, 99) < 2.0 and np.percentile(del_lat, 99) < 2.0
        assert got is not None and got.version > 0 and store.get("n0") is None
        assert redis_client.xlen(store.log_key) > len(catalog) + 16  # every write was logged
    finally:
        load.stop.set()
        f.stop()
        proc.terminate()
        try:
            out = proc.communicate(timeout=15)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            out = proc.communicate()[0].decode(errors="replace")
        print("flow output (tail):\n" + out[-3000:])
