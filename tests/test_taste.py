"""Taste features (FEATURE_VERSION 2): the user's recent items and brand preference as the
dataflow's step functions keep them, and the scorer's taste similarity computed from the
same ANN replica vectors retrieval searches, logged exactly as the ranker saw it."""

from __future__ import annotations

import math
import random
import time

import numpy as np

from features import user_features as UF
from features.ranking_features import COL, DENSE, SPARSE, hash_token, time_of_week
from features.taste import history_items, history_vector, similarities
from models.deepfm import encode_features
from online.ann.index import AnnIndex
from online.server import build_server
from proto import recommend_pb2
from tests.test_serving import _catalog, _load_state, _stub, _view

NOW = int(time.time() * 1000)


def test_recent_items_and_brand_preference_do_not_depend_on_event_order():
    rng = random.Random(5)
    p = UF.UserParams(recent_n=6)
    events = [(f"i{rng.randrange(15)}", f"b{rng.randrange(4)}", NOW - rng.randrange(10**7))
              for _ in range(60)]
    states = []
    for _ in range(3):
        rng.shuffle(events)
        u = None
        for item, brand, ts in events:
            u = UF.apply_event(u, etype="view", ts_ms=ts, category="c", price=0.0, p=p,
                               item_id=item, brand=brand)
        assert u is not None
        states.append(u.to_dict(p))
    assert states[0]["recent"] == states[1]["recent"] == states[2]["recent"]
    latest: dict[str, int] = {}
    for item, _b, ts in events:
        latest[item] = max(latest.get(item, 0), ts)
    assert states[0]["recent"] == sorted(latest, key=lambda i: (-latest[i], i))[:6]
    for a, b in zip(states[0]["brand"].items(), states[2]["brand"].items(), strict=True):
        assert a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-9)
    weights: dict[str, float] = {}  # decayed counts, computed directly (2^(t/half-life))
    for _i, brand, ts in events:
        weights[brand] = weights.get(brand, 0.0) + 2.0 ** ((ts - NOW) / (p.half_life_s * 1000))
    total = sum(weights.values())
    for brand, share in states[0]["brand"].items():
        assert math.isclose(share, weights[brand] / total, rel_tol=1e-6)

def test_history_vector_and_similarities_against_a_direct_computation():
    rng = np.random.default_rng(3)
    hist = rng.normal(size=(4, 8))
    ranks = [0, 2, 3]  # history item 1 has no vector
    user = history_vector(ranks, hist[ranks], decay=0.5)
    direct = 1.0 * hist[0] + 0.25 * hist[2] + 0.125 * hist[3]
    assert user is not None and np.allclose(user, direct / np.linalg.norm(direct))
    items = rng.normal(size=(3, 8))
    sims = similarities(5, [0, 3, 4], items, user)
    assert np.isnan(sims[1]) and np.isnan(sims[2])
    for pos, vec in zip([0, 3, 4], items, strict=True):
        assert math.isclose(sims[pos], float(vec @ user / np.linalg.norm(vec)), rel_tol=1e-9)
    assert np.isnan(similarities(2, [0], items[:1], None)).all()
    assert history_items(["a", "b"], ["b", "c", "a", "d"], limit=3) == ["a", "b", "c"]


def test_time_of_week_is_cyclical():
    day = 24 * 3_600_000
    assert np.allclose(time_of_week(NOW)[:2], time_of_week(NOW + day)[:2])
    assert np.allclose(time_of_week(NOW), time_of_week(NOW + 7 * day))
    assert not np.allclose(time_of_week(NOW)[2:], time_of_week(NOW + day)[2:])


class CapturingRanker:
    """Records the feature batch the scorer ranks with (and scores by taste, for the order)."""

    version = "capture"

    def __init__(self) -> None:
        self.batches: list = []

    def predict(self, batch):
        self.batches.append(batch)
        p = 0.05 + 0.04 * batch.dense[:, COL["taste_sim"]]
        return np.stack([p, p / 2, p / 4], axis=1)


def test_the_scorer_computes_taste_from_the_replica_vectors_and_logs_it(settings, redis_client):
    recs = [_catalog(f"s{j}", "shoes") for j in range(8)] + [_catalog(f"h{j}", "hats") for j in range(8)]
    n = 0
    for u in range(6):
        for j in range(8):
            n += 1
            recs.append(_view(n, f"o{u}", f"h{j}", NOW - 500_000 + n))
    for j in range(4):  # u1's history, newest last: s3, s2, s1, s0 (newest first)
        n += 1
        recs.append(_view(n, "u1", f"s{j}", NOW - 100_000 + n))
    _load_state(settings, redis_client, recs)
    rng = np.random.default_rng(11)
    ids = [f"s{j}" for j in range(8)] + [f"h{j}" for j in range(7)]  # h7 has no vector
    raw = rng.normal(size=(len(ids), 16)).astype(np.float32)
    index = AnnIndex(16, capacity=64)
    index.upsert(ids, raw)
    srv = build_server(settings.replace(explore_epsilon=0.0, cache_ttl_s=0, taste_feature=True), port=0,
                       log_impressions=False, ann=index)
    ranker = CapturingRanker()
    srv.servicer.ranker_for = lambda arm: ranker  # type: ignore[method-assign]
    try:
        resp = _stub(srv).Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=5), timeout=5)
        assert not resp.degraded, resp.degraded_reason
    finally:
        srv.stop(0)
    (batch,) = ranker.batches
    # the shopper's id is a request-level sparse feature: on every logged row, and the trainer's
    # encoding of a logged row reads it into the ranker's user_id column
    assert {row["user_id"] for row in batch.rows()} == {"u1"}
    sparse, _ = encode_features([batch.row(0)])
    assert sparse[0, SPARSE.index("user_id")] == hash_token("user_id", "u1") != 0
    unit = {i: v / np.linalg.norm(v) for i, v in zip(ids, raw.astype(np.float64), strict=True)}
    pooled = sum(0.85 ** r * unit[f"s{3 - r}"] for r in range(4))
    user = pooled / np.linalg.norm(pooled)
    checked = 0
    for j, item in enumerate(batch.item_ids):
        row = dict(zip(DENSE, batch.dense[j], strict=True))
        if item in unit:
            assert row["taste_known"] == 1.0
            assert math.isclose(row["taste_sim"], float(unit[item] @ user), abs_tol=1e-5)
            checked += 1
        else:
            assert row["taste_known"] == 0.0 and row["taste_sim"] == 0.0
        assert row["session_depth"] == math.log1p(4)
        assert row["hour_sin"] != 0.0 or row["hour_cos"] != 0.0
    assert checked >= 4
    # the ranker ordered by taste: the served items are the most similar candidates' order
    served = [i.item_id for i in resp.items]
    sims = {item: float(unit[item] @ user) for item in served if item in unit}
    assert list(sims) == sorted(sims, key=lambda i: -sims[i])


def test_history_source_and_in_history_feature_follow_the_recent_list():
    from features.ranking_features import ItemColumns, ItemRow, RetrievalColumns, assemble_columns
    from online.retrieval import HistorySource, Query
    from online.store import UserState

    recent = ["a", "b", "c"]
    state = UserState(session=None, features={"recent": recent}, purchased=frozenset(), cached=None)
    rows = HistorySource(quota=2).fetch(Query("u", state))
    assert [i for i, _ in rows] == ["a", "b"] and rows[0][1] > rows[1][1]
    ids = ["c", "x", "a"]
    items = ItemColumns.from_rows([ItemRow("c1", "b1", 10.0, math.nan, 0.02, 0.05, True)] * 3)
    batch = assemble_columns(item_ids=ids, items=items, retrieval=RetrievalColumns.from_mappings([{}] * 3),
                             user_features={"recent": recent}, session_affinity={}, last_viewed=set(),
                             context={}, now_ms=NOW, half_life_s=3600.0)
    got = batch.dense[:, COL["in_history"]].tolist()
    assert got[1] == 0.0 and got[2] > got[0] > 0.0  # "a" is the newest, "c" the oldest
