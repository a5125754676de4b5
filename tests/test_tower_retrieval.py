"""The ANN source with a promoted two-tower: the session tower's vector of the user's recent
items, searched among that model's item vectors (in-process for an id-only model, the Redis
tower index the embeddings dataflow writes for a content model). Real Redis, real registry,
real gRPC server; the expected neighbours are computed here by brute force from the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import REGISTRY

from features.embedding_store import EmbeddingStore
from models.registry import ModelRegistry, default_root
from models.two_tower import TwoTower, TwoTowerConfig
from online.retrieval import Query
from online.server import build_server
from online.tower import Tower
from proto import recommend_pb2
from proto.keys import tower_keys
from tests.test_serving import NOW, _catalog, _load_state, _stub, _view

SHOES = [f"s{j}" for j in range(8)]
HATS = [f"h{j}" for j in range(8)]
SESSION = ["s0", "s3", "h1", "s2"]  # u1's views, oldest first


@pytest.fixture()
def shop(settings, redis_client, tmp_path: Path):
    """u1 viewed SESSION; u2 viewed only items no model knows. Own state dir: own registry."""
    recs = [_catalog(i, "shoes") for i in SHOES] + [_catalog(i, "hats") for i in HATS]
    recs += [_catalog("x1", "other"), _catalog("x2", "other")]
    for n, item in enumerate(SESSION):
        recs.append(_view(n, "u1", item, NOW - 100_000 + n))
    recs += [_view(10, "u2", "x1", NOW - 50_000), _view(11, "u2", "x2", NOW - 49_000)]
    _load_state(settings, redis_client, recs)
    return settings.replace(state_dir=str(tmp_path / "state"), explore_epsilon=0.0)


def _promote(s, model: TwoTower, tmp: Path, vocab: dict[str, int] | None) -> str:
    folder = tmp / f"tt{time.monotonic_ns()}"
    folder.mkdir()
    model.save(folder / "model.pt")
    if vocab is not None:
        (folder / "item_ids.json").write_text(json.dumps(vocab))
    reg = ModelRegistry(default_root(s.state_dir))
    version = reg.register("two_tower", folder, {})
    reg.promote("two_tower", version)
    return version


def _user_vector(model: TwoTower, vocab: dict[str, int], session_oldest_first: list[str]) -> np.ndarray:
    """The eager session tower's vector: the known items, right-aligned, most recent last."""
    rows = [vocab[i] for i in session_oldest_first if i in vocab]
    prefix = torch.zeros((1, model.config.max_len), dtype=torch.int64)
    prefix[0, -len(rows):] = torch.tensor(rows)
    with torch.no_grad():
        return model.user_vectors(prefix)[0].numpy()


def _brute_force(model: TwoTower, vocab: dict[str, int], session_oldest_first: list[str],
                 item_vecs: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    """Every item but the session's, by cosine with the eager session tower's vector."""
    u = _user_vector(model, vocab, session_oldest_first)
    scored = [(i, float(v @ u)) for i, v in item_vecs.items() if i not in session_oldest_first]
    return sorted(scored, key=lambda r: -r[1])


def _ann_source(srv):
    return next(src for src in srv.servicer.sources if src.name == "ann")


def _wait_tower(srv, version: str, timeout: float = 30.0) -> Tower:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = srv.tower.current
        if cur is not None and cur.version == version and cur.index() is not None and len(cur.index()):
            return cur  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"two-tower {version} not serving after {timeout} s")


def _tower_queries() -> float:
    return REGISTRY.get_sample_value("recsys_serve_ann_queries_total", {"space": "tower"}) or 0.0


def test_id_only_tower_retrieves_the_session_towers_neighbours(shop, tmp_path: Path):
    torch.manual_seed(7)
    model = TwoTower(TwoTowerConfig(n_items=20, dim=16, max_len=6)).eval()
    vocab = {item: j + 1 for j, item in enumerate(SHOES + HATS)}  # x1, x2: unknown to the model
    srv = build_server(shop, port=0, log_impressions=False)
    try:
        assert srv.tower is not None and srv.tower.current is None  # nothing promoted: pooling
        version = _promote(shop, model, tmp_path, vocab)
        srv.tower.check_once()
        tower = _wait_tower(srv, version)
        assert tower.kind == "vocabulary"
        with torch.no_grad():
            vecs = model.item_vectors(torch.tensor(list(vocab.values()))).numpy()
        expected = _brute_force(model, vocab, SESSION, dict(zip(vocab, vecs, strict=True)))
        store = srv.servicer.store
        before = _tower_queries()
        got = _ann_source(srv).fetch(Query("u1", store.user_state("u1")))
        assert _tower_queries() == before + 1
        assert [i for i, _ in got] == [i for i, _ in expected]  # session items excluded, order kept
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)
        # a session of items the model never saw: the tower has no vector, pooling takes over
        assert tower.user_vector(store.user_state("u2").last_viewed) is None
        _ann_source(srv).fetch(Query("u2", store.user_state("u2")))
        assert _tower_queries() == before + 1
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=10), timeout=5)
        assert not resp.degraded, resp.degraded_reason
        assert any("ann" in i.sources for i in resp.items)
        assert not set(SESSION) & {i.item_id for i in resp.items}
        assert _tower_queries() == before + 2
    finally:
        srv.stop(0)


def test_content_tower_follows_the_index_the_embeddings_flow_writes(shop, redis_client, tmp_path: Path):
    torch.manual_seed(11)
    model = TwoTower(TwoTowerConfig(n_items=20, dim=12, max_len=5, n_categories=4, n_brands=4)).eval()
    vocab = {item: j + 1 for j, item in enumerate(SHOES)}
    version = _promote(shop, model, tmp_path, vocab)
    # what the embeddings dataflow writes for this version: every active catalog item, also
    # ones the model has no id row for (here: random unit vectors stand in for content)
    items = SHOES + HATS + ["x1"]
    vecs = np.random.default_rng(3).normal(size=(len(items), 12)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    EmbeddingStore(redis_client, tower_keys(shop.redis_prefix, version)).put_many(items, vecs)
    srv = build_server(shop, port=0, log_impressions=False)
    try:
        tower = _wait_tower(srv, version)
        assert tower.kind == "followed"
        expected = _brute_force(model, vocab, SESSION, dict(zip(items, vecs, strict=True)))
        got = _ann_source(srv).fetch(Query("u1", srv.servicer.store.user_state("u1")))
        assert [i for i, _ in got] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=1e-4)
        # a catalog item the flow writes later is found without a restart: one pointing where
        # the session does comes first
        u = _user_vector(model, vocab, SESSION)
        EmbeddingStore(redis_client, tower_keys(shop.redis_prefix, version)).put("new1", u)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "new1" not in tower.index():
            time.sleep(0.05)
        got = _ann_source(srv).fetch(Query("u1", srv.servicer.store.user_state("u1")))
        assert got[0][0] == "new1" and got[0][1] == pytest.approx(1.0, abs=1e-4)
    finally:
        srv.stop(0)


def test_unusable_versions_keep_what_is_served(shop, tmp_path: Path):
    torch.manual_seed(5)
    srv = build_server(shop, port=0, log_impressions=False)
    try:
        assert srv.tower is not None
        _promote(shop, TwoTower(TwoTowerConfig(n_items=20, dim=8)), tmp_path, None)  # no vocabulary
        assert not srv.tower.check_once() and srv.tower.current is None
        good = _promote(shop, TwoTower(TwoTowerConfig(n_items=20, dim=8)), tmp_path, {"s0": 1, "s2": 2})
        assert srv.tower.check_once()
        first = _wait_tower(srv, good)
        _promote(shop, TwoTower(TwoTowerConfig(n_items=20, dim=8)), tmp_path, {"s0": 99})  # row outside
        assert not srv.tower.check_once() and srv.tower.current is first
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert not resp.degraded and len(resp.items) == 5
    finally:
        srv.stop(0)


def test_a_redis_outage_while_loading_is_retried(shop, redis_client, tmp_path: Path):
    """A content model's index is followed from Redis: if Redis is unreachable when the version
    is promoted, the next poll loads it (it is not written off as unusable)."""
    from online.tower import TowerHolder
    from recsys.embedded.redis_server import free_port

    torch.manual_seed(13)
    model = TwoTower(TwoTowerConfig(n_items=20, dim=8, n_categories=4)).eval()
    version = _promote(shop, model, tmp_path, {"s0": 1, "s3": 2})
    EmbeddingStore(redis_client, tower_keys(shop.redis_prefix, version)).put_many(
        HATS, np.eye(8, dtype=np.float32))
    holder = TowerHolder(shop.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        assert not holder.check_once() and holder.current is None  # nothing listens there
        holder.s = shop  # Redis is back
        assert holder.check_once()
        assert holder.current is not None and holder.current.version == version
        index = holder.current.index()
        assert index is not None and all(i in index for i in HATS)
    finally:
        holder.stop()
