"""The two-tower trained on our own traffic (models.tower_retrain): sessions and catalog copied
from the real broker's topics, the recall gate against what the ANN source serves, the registry
record, and the content path that gives a new catalog item a meaningful vector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import kafka
from models import own_sessions as OS
from models import tower_retrain as TR
from models.registry import TWO_TOWER, TWO_TOWER_VOCAB, ModelRegistry, default_root
from models.two_tower import TwoTower, content_features
from proto import events_pb2
from sim.training_set import TrainingSetConfig, simulate

T0 = 1_750_000_000_000


def _event(user: str, item: str, t: int, kind: int = events_pb2.VIEW) -> bytes:
    return events_pb2.Event(event_id=f"{user}-{t}-{item}", event_time_ms=t, user_id=user, type=kind,
                            item_id=item).SerializeToString()


def test_sessions_follow_the_live_session_rules():
    gap = 1_800_000
    records = [
        _event("u1", "a", T0), _event("u1", "a", T0 + 1_000),  # a repeat folds into one step
        _event("u1", "b", T0 + 2_000, events_pb2.CLICK),
        _event("u1", "z", T0 + 3_000, events_pb2.ADD_TO_CART),  # not part of the sequence
        _event("u1", "c", T0 + 2_000 + gap + 1),  # past the gap: a new session (of one: dropped)
        _event("u2", "b", T0 + 500), _event("u2", "c", T0 + 400),  # out of order: event time rules
        b"\x00garbage", _event("", "x", T0),
    ]
    counts = OS.ReadCounts()
    sessions = OS.sessions_from_clickstream(records, gap, counts)
    assert [(s.user_id, s.items) for s in sessions] == [("u1", ("a", "b")), ("u2", ("c", "b"))]
    assert (counts.undecodable + counts.missing_ids, counts.skipped) == (2, 1)
    cases = OS.next_item_cases(sessions, last_n=5)
    assert cases == [(("a",), "b"), (("c",), "b")]


def test_latest_catalog_row_wins():
    def row(item: str, cat: str, t: int, active: bool = True) -> bytes:
        return events_pb2.ItemUpsert(item_id=item, category=cat, active=active,
                                     updated_ms=t).SerializeToString()

    cat = OS.latest_catalog([row("i1", "c1", 5), row("i1", "c2", 9), row("i1", "c3", 7),
                             row("i2", "c1", 1), row("i2", "c1", 2, active=False), b"\xff"])
    assert (cat["i1"].category, cat["i2"].active) == ("c2", False)


@pytest.fixture(scope="module")
def shop_log():
    """A seeded simulated shop's clickstream and catalog, as the live topics would hold them."""
    log: list[tuple[int, str, bytes]] = []
    simulate(TrainingSetConfig(days=0.1, warmup_days=0.02, sessions_per_h=500, purchase_window_s=60,
                               taste_vectors=False), keep_log=log)
    return log


def _produce(settings, log) -> None:
    p = kafka.producer(settings)
    for i, (_t, topic, value) in enumerate(log):
        if topic in ("clickstream", "catalog"):
            p.produce(settings.topic(topic), key=str(i % 13).encode(), value=value)
        if i % 1000 == 0:
            p.poll(0)
    assert p.flush(20) == 0


def test_tower_round_promotes_only_a_better_retriever(settings, tmp_path, shop_log):
    s = settings.replace(state_dir=str(tmp_path))
    assert TR.tower_round(s)["action"] == "skip"  # empty topics: nothing to learn from
    _produce(s, shop_log)
    first = TR.tower_round(s, log=lambda _m: None)
    print(json.dumps({k: first[k] for k in ("action", "reason", "cases", "sessions")}))
    new, served = first["new"], first["served"]
    assert first["store"]["clickstream"]["new"] == sum(t == "clickstream" for _, t, _ in shop_log)
    # nothing promoted and no item2vec vectors in Redis: the ANN source serves nothing yet
    assert served["retriever"] == "item2vec pooling" and served["items"] == 0
    assert new["cases"] >= 200 and new["answered"] > 0.9 * new["cases"]
    # it learned the sessions: far above the share of the catalog it may return
    assert new["recall"] > 2 * new["k"] / new["items"]
    assert first["action"] == ("promoted" if new["recall"] > served["recall"] else "kept")
    reg = ModelRegistry(default_root(tmp_path))
    assert reg.decisions(TWO_TOWER) == [json.loads(json.dumps(first))]
    cur = reg.current(TWO_TOWER)
    assert cur is not None and cur.version == first["new_version"]
    vocab = json.loads((cur.path / TWO_TOWER_VOCAB).read_text())
    assert set(vocab) <= {i for _, t, v in shop_log if t == "catalog"
                          for i in [events_pb2.ItemUpsert.FromString(v).item_id]}
    # the same data again: the new model is the served one's twin, no better: kept
    second = TR.tower_round(s, log=lambda _m: None)
    assert second["store"]["clickstream"]["new"] == 0
    assert second["served"]["retriever"] == f"two_tower {cur.version}"
    assert second["new"]["recall"] == pytest.approx(second["served"]["recall"], abs=1e-9)
    assert second["action"] == "kept" and reg.current(TWO_TOWER).version == cur.version
    # a new catalog item (no trained id: its catalog row alone) lands nearest its own category
    model = TwoTower.load(cur.model_file)
    catalog = OS.latest_catalog(v for _, t, v in shop_log if t == "catalog")
    known = [i for i in vocab if catalog.get(i) is not None]
    cats = np.array([catalog[i].category for i in known])
    groups = sorted(set(cats.tolist()))
    rows = [catalog[i] for i in known]
    with torch.inference_mode():
        trained = model.item_vectors(torch.tensor([vocab[i] for i in known]),
                                     content_features(rows, model.config)).numpy()
        cold = model.item_vectors(torch.zeros(len(known), dtype=torch.int64),
                                  content_features(rows, model.config)).numpy()
    centroids = np.stack([trained[cats == g].mean(axis=0) for g in groups])  # [n_groups, D]
    nearest = np.array(groups)[np.argmax(cold @ centroids.T, axis=1)]
    accuracy = float((nearest == cats).mean())
    print(f"content-only vectors nearest their own category: {accuracy:.3f} ({len(groups)} categories)")
    assert accuracy > 10 / len(groups)  # ten times chance


def test_gate_refuses_a_worse_or_untested_retriever():
    cfg = TR.TowerRetrainConfig()
    served = {"retriever": "two_tower v1", "recall": 0.40, "cases": 1000}
    assert TR.decide({"recall": 0.39, "cases": 1000}, served, cfg)[0] is False
    assert TR.decide({"recall": 0.41, "cases": 1000}, served, cfg)[0] is True
    assert TR.decide({"recall": 0.90, "cases": cfg.min_cases - 1}, served, cfg)[0] is False
