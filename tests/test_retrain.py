"""The retraining loop: trains from the training-examples topic (real broker), evaluates new and
current models on the same newest slice, promotes only the better one."""

from __future__ import annotations

import math

import numpy as np

from core import kafka
from features.ranking_features import assemble
from models.registry import ModelRegistry, default_root
from proto import codecs, events_pb2
from recsys.cli.retrain import round_once


def _produce_examples(settings, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    p = kafka.producer(settings)
    t0 = 1_750_000_000_000
    for i in range(n):
        # shoppers click cheap items: price is a feature the heuristic ranker does not use
        price = float(np.exp(rng.uniform(0.0, 6.0)))
        click = bool(rng.random() < 0.02 + 0.4 * (1 - np.log(price) / 6.0) ** 3)
        pref = float(rng.random())
        cat = f"c{rng.integers(5)}"
        feats = assemble(item_id=f"i{rng.integers(50)}", catalog={"category": cat, "price": price},
                         item_stats=None, user_features={"pref": {cat: pref}},
                         session_affinity={cat: float(rng.random())}, last_viewed=frozenset(),
                         retrieval={"popular": 0.5}, context={"surface": "home"}, now_ms=t0,
                         half_life_s=86400.0)
        ex = events_pb2.TrainingExample(
            example_id=f"r{i // 10}/{i}", request_id=f"r{i // 10}", item_id=feats["item_id"],
            impression_time_ms=t0 + i * 1000, position=i % 10, features=codecs.pack_features(feats),
            click=click, add_to_cart=click and rng.random() < 0.3, version=1)
        p.produce(settings.topic("training"), key=ex.request_id.encode(), value=ex.SerializeToString())
    assert p.flush(10) == 0


def test_retrain_promotes_only_a_better_model(settings, tmp_path):
    s = settings.replace(state_dir=str(tmp_path))
    assert round_once(s, epochs=1, min_examples=100)["action"] == "skip"  # empty topic
    _produce_examples(s, 4000, seed=1)
    first = round_once(s, epochs=2, min_examples=100)
    # nothing promoted yet: the new model had to beat the heuristic ranker on the same slice
    assert first["current_version"] == "heuristic-v1" and not math.isnan(first["current_auc"])
    assert first["new_auc"] > 0.65  # it learned the click ~ price relation
    assert first["current_auc"] < first["new_auc"] - 0.05  # the price-blind heuristic cannot
    assert first["action"] == "promoted"
    reg = ModelRegistry(default_root(tmp_path))
    assert reg.current(s.ranker_model).version == first["new_version"]
    second = round_once(s, epochs=1, min_examples=100)
    assert second["current_version"] == first["new_version"] and not math.isnan(second["current_auc"])
    expect = "promoted" if second["new_auc"] > second["current_auc"] else "kept"
    assert second["action"] == expect
    current = reg.current(s.ranker_model).version
    assert current == (second["new_version"] if expect == "promoted" else first["new_version"])
