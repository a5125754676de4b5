"""The promotion gate (models.promotion), its registry records, the SNIPS estimate and the rows
the live retrain leaves out. Synthetic slices with known truth; every seed fixed."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from features.ranking_features import assemble
from models import promotion as P
from models import training_examples as TE
from models.registry import ModelRegistry
from proto import codecs, events_pb2
from recsys.cli.retrain import examination, purchase_labels

SLATE = 10
EXAMINE = 1.0 / np.log2(np.arange(SLATE) + 2.0)  # examination by position (position 0 = 1)


def _slice(requests: int = 2000, seed: int = 0, examine: bool = False) -> dict[str, np.ndarray]:
    """A logged slice: slates of SLATE items in random order, true click probabilities, labels
    drawn from them (cart = 30% of clicks, purchase = 30% of carts); with ``examine`` the
    shopper sees position k with probability EXAMINE[k] (``p_top`` is then the top-slot one)."""
    rng = np.random.default_rng(seed)
    n = requests * SLATE
    p_top = 1.0 / (1.0 + np.exp(-rng.normal(-2.2, 1.0, n)))
    position = np.tile(np.arange(SLATE), requests)
    shown = p_top * (EXAMINE[position] if examine else 1.0)
    click = rng.random(n) < shown
    cart = click & (rng.random(n) < 0.3)
    purchase = cart & (rng.random(n) < 0.3)
    probs = np.stack([p_top, 0.3 * p_top, 0.09 * p_top], axis=1)
    return {"labels": np.stack([click, cart, purchase], axis=1).astype(np.float32), "probs": probs,
            "request": np.repeat(np.arange(requests), SLATE), "position": position,
            "noise": rng.normal(0.0, 1.0, n)}


def _decide(s: dict[str, np.ndarray], new: P.Scored, cur: P.Scored, **policy: Any) -> dict:
    return P.decide(P.PromotionPolicy(n_boot=200, **policy), s["labels"], s["request"],
                    s["position"], new, cur)


def test_ndcg_matches_scikit_learn_on_graded_gains():
    s = _slice(requests=300, seed=1)
    score = s["probs"][:, 0] + 0.05 * s["noise"]  # continuous: no ties for sklearn to average
    rel = P.graded_relevance(s["labels"])
    ours, ids = P.ndcg_per_request(score, rel, s["request"], s["position"], k=5)
    gains = (2.0 ** rel - 1.0).reshape(-1, SLATE)
    ref = ndcg_score(gains[ids], score.reshape(-1, SLATE)[ids], k=5)
    assert ids.size > 50 and ours.mean() == pytest.approx(ref, abs=1e-12)
    # graded: a purchase outranks a click; the row order of the slice does not matter
    assert list(P.graded_relevance([[1, 0, 0], [1, 1, 0], [1, 1, 1], [0, 0, 0]])) == [1, 2, 3, 0]
    perm = np.random.default_rng(2).permutation(score.size)
    shuffled, _ = P.ndcg_per_request(score[perm], rel[perm], s["request"][perm], s["position"][perm], 5)
    assert shuffled.mean() == pytest.approx(ours.mean(), abs=1e-12)


def test_gate_refuses_a_worse_ranker_and_accepts_a_better_calibrated_one():
    s = _slice()
    good = P.Scored(s["probs"][:, 0], s["probs"])  # the truth itself: calibrated and best-ordered
    # served: ranks by a noisy view of the truth
    weak = P.Scored(s["probs"][:, 0] * np.exp(1.5 * s["noise"]), s["probs"])
    worse = P.Scored(-s["probs"][:, 0], s["probs"])  # calibrated, but ranks by negated relevance
    d = _decide(s, worse, weak)
    assert not d["promote"] and d["ndcg_gain"] < 0 and d["ndcg_gain_ci95"][1] < 0
    assert "does not beat the served" in d["reason"]
    assert all(v < 0.02 for v in d["new"]["ece"].values())  # refused for its ranking alone
    ok = _decide(s, good, weak)
    assert ok["promote"] and ok["ndcg_gain_ci95"][0] > 0, ok["reason"]
    assert ok["new"]["ndcg"] > ok["current"]["ndcg"] and ok["requests_scored"] > 500
    assert ok["new"]["mean_auc"] > 0.6 and set(ok["new"]["ece"]) == set(P.HEADS)
    # a margin larger than the gain refuses; require_ci passes only a significant gain
    assert not _decide(s, good, weak, min_gain=ok["ndcg_gain"] + 0.01)["promote"]
    assert _decide(s, good, weak, require_ci=True)["promote"]
    other = np.random.default_rng(9).normal(0.0, 1.0, s["noise"].size)
    near = P.Scored(s["probs"][:, 0] * np.exp(1.5 * other), s["probs"])  # as noisy as the served
    lenient = _decide(s, near, weak, min_gain=-0.05)  # tolerating a small loss, it passes
    assert lenient["promote"] and lenient["ndcg_gain_ci95"][0] < 0 < lenient["ndcg_gain_ci95"][1]
    strict = _decide(s, near, weak, min_gain=-0.05, require_ci=True)
    assert not strict["promote"] and "not significant" in strict["reason"]


def test_gate_wants_enough_slates_with_a_positive():
    s = _slice(requests=30, seed=3)
    good = P.Scored(s["probs"][:, 0], s["probs"])
    weak = P.Scored(s["probs"][:, 0] * np.exp(1.5 * s["noise"]), s["probs"])
    d = _decide(s, good, weak, max_ece=1.0)  # ECE on 300 rows is noise: rank alone decides here
    assert d["ndcg_gain"] > 0 and 0 < d["requests_scored"] < P.PromotionPolicy().min_requests
    assert not d["promote"] and "too little evidence" in d["reason"]
    assert _decide(s, good, weak, max_ece=1.0, min_requests=d["requests_scored"])["promote"]


def test_gate_refuses_a_miscalibrated_ranker_that_ranks_the_same():
    s = _slice()
    weak = P.Scored(s["probs"][:, 0] * np.exp(1.5 * s["noise"]), s["probs"])
    tripled = np.clip(3.0 * s["probs"], 0.0, 1.0)
    bad = P.Scored(s["probs"][:, 0], tripled)  # the same order as the truth, probabilities x3
    d = _decide(s, bad, weak)
    good = _decide(s, P.Scored(s["probs"][:, 0], s["probs"]), weak)
    assert d["new"]["ndcg"] == good["new"]["ndcg"] and d["ndcg_gain"] > 0
    assert not d["promote"] and d["new"]["ece"]["click"] > 0.02 and "ECE at or above" in d["reason"]
    assert d["new"]["ece"]["click"] > 5 * d["new"]["ece_noise"]["click"]  # not sampling noise
    assert good["promote"]


def test_position_debiased_ranker_is_judged_at_the_shown_positions():
    s = _slice(examine=True, seed=3)
    examine = EXAMINE[s["position"]]
    weak = P.Scored(s["probs"][:, 0] * np.exp(1.5 * s["noise"]), s["probs"] * examine[:, None])
    top = P.Scored(s["probs"][:, 0], s["probs"], examine=examine)  # predicts the top-slot probability
    d = _decide(s, top, weak)
    assert d["promote"] and d["new"]["position_debiased"], d["reason"]
    blind = _decide(s, P.Scored(s["probs"][:, 0], s["probs"]), weak)  # the same numbers, no curve
    assert not blind["promote"] and blind["new"]["ece"]["click"] > 0.02
    # the hook reads the learned curve from a checkpoint's meta; positions past it share its end
    ranker = SimpleNamespace(meta={"examination": [1.0, 0.5, 0.25]})
    np.testing.assert_allclose(examination(ranker, np.array([0, 2, 7])), [1.0, 0.25, 0.25])
    assert examination(SimpleNamespace(meta={"examination": None}), np.array([0])) is None


def test_purchase_ece_against_incomplete_labels_uses_the_observable_share():
    rng = np.random.default_rng(4)
    n = 40_000
    p = np.stack([np.full(n, 0.5), np.full(n, 0.4), rng.uniform(0.05, 0.35, n)], axis=1)
    f = rng.uniform(0.1, 1.0, n)  # F(elapsed): the share of purchases already seen
    labels = np.stack([rng.random(n) < p[:, 0], rng.random(n) < p[:, 1],
                       rng.random(n) < p[:, 2] * f], axis=1)
    assert P.head_ece(labels, p)["purchase"] > 0.05  # the eventual rate against seen purchases
    assert P.head_ece(labels, p, observable=f)["purchase"] < 0.01


def test_decisions_are_written_to_the_registry(tmp_path):
    reg = ModelRegistry(tmp_path)
    src = tmp_path / "m.pt"
    src.write_bytes(b"weights")
    v1 = reg.register("ranker", src, {"auc_click": 0.7})
    manifest = (reg.path("ranker", v1) / "manifest.json").read_text()
    s = _slice(requests=500, seed=5)
    d = _decide(s, P.Scored(s["probs"][:, 0], s["probs"]), P.Scored(-s["probs"][:, 0], s["probs"]))
    assert d["new"]["auc"]["purchase"] is not None
    rec = P.json_safe({"action": "promoted" if d["promote"] else "kept", "new_version": v1,
                       **d, "nan": math.nan})
    assert rec["nan"] is None  # strict JSON: NaN is refused by the registry
    with pytest.raises(ValueError):
        reg.record_decision("ranker", {"new_version": v1, "x": math.nan})
    reg.record_decision("ranker", rec)
    reg.record_decision("ranker", {**rec, "action": "kept", "reason": "again"})
    assert [r["reason"] for r in reg.decisions("ranker")] == [rec["reason"], "again"]
    assert reg.decision("ranker", v1)["reason"] == "again"  # the latest about that version
    assert reg.decisions("other") == [] and reg.decision("ranker", "v9") is None
    lines = (tmp_path / "ranker" / "decisions.jsonl").read_text().splitlines()
    assert json.loads(lines[0]) == rec
    assert (reg.path("ranker", v1) / "manifest.json").read_text() == manifest  # folder untouched
    assert reg.versions("ranker") == [v1]


def test_snips_is_unbiased_for_a_known_logging_policy():
    rng = np.random.default_rng(6)
    contexts, actions, n, reps = 40, 5, 2000, 300

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    mu = softmax(rng.normal(0, 1.0, (contexts, actions)))  # logging policy
    pi = softmax(rng.normal(0, 1.5, (contexts, actions)))  # target policy
    r = rng.uniform(0.02, 0.5, (contexts, actions))  # click probability of each action
    truth = float((pi * r).sum(axis=1).mean())
    est, naive, covered = [], [], 0
    for seed in range(reps):
        g = np.random.default_rng(100 + seed)
        x = g.integers(0, contexts, n)
        a = np.minimum((g.random(n)[:, None] > np.cumsum(mu[x], axis=1)).sum(axis=1), actions - 1)
        y = (g.random(n) < r[x, a]).astype(float)
        out = P.snips(y, pi[x, a], mu[x, a], n_boot=100, seed=seed)
        est.append(out["estimate"])
        naive.append(y.mean())
        covered += out["ci95"][0] <= truth <= out["ci95"][1]
    se = np.std(est) / math.sqrt(reps)
    assert abs(np.mean(est) - truth) < 3 * se + 1e-3, (np.mean(est), truth, se)
    assert abs(np.mean(naive) - truth) > 10 * se  # the logged click rate is not the answer
    assert 0.85 <= covered / reps <= 0.99


def test_explored_slot_target_estimates_score_proportional_exploration():
    eps, reps, slots, most = 0.1, 200, 1500, 40
    est, truth = [], []
    for seed in range(reps):
        g = np.random.default_rng(1000 + seed)
        size = g.integers(10, most, slots)  # each explored slot's pool
        member = np.arange(most) < size[:, None]
        c = g.uniform(0.01, 0.4, (slots, most))  # the pools' click probabilities
        q = np.where(member, np.clip(c + g.normal(0, 0.1, c.shape), 0.01, None), 0.0)  # candidate's
        j = (g.random(slots) * size).astype(int)  # the logging policy: a uniform draw per pool
        pick, prop = q[np.arange(slots), j], eps / size
        click = (g.random(slots) < c[np.arange(slots), j]).astype(float)
        target = P.explored_slot_target(pick, prop, eps)
        est.append(P.snips(click, target, prop, n_boot=1)["estimate"])
        truth.append(np.mean((q * c).sum(axis=1) / q.sum(axis=1)))  # the candidate's click rate
    se = np.std(est) / math.sqrt(reps)
    assert abs(np.mean(est) - np.mean(truth)) < 3 * se + 2e-3, (np.mean(est), np.mean(truth), se)
    assert np.mean(truth) > 0.22  # it prefers the clicked items: well above uniform (0.205)


def _example(i: int, version: str = "ranker-v3", features: dict | None = None) -> events_pb2.TrainingExample:
    feats = features if features is not None else assemble(
        item_id=f"i{i}", catalog={"category": "c1", "price": 10.0 + i}, item_stats=None,
        user_features=None, session_affinity={}, last_viewed=set(), retrieval={"popular": 0.5},
        context={"surface": "home"}, now_ms=1_750_000_000_000, half_life_s=3600.0)
    return events_pb2.TrainingExample(
        example_id=f"r{i // 5}/i{i}", request_id=f"r{i // 5}", item_id=f"i{i}", position=i % 5,
        impression_time_ms=1_750_000_000_000 + i, features=codecs.pack_features(feats),
        propensity=0.5 + i / 100, model_version=version, click=i % 3 == 0, version=1)


def test_degraded_and_fallback_rows_are_dropped():
    rows = [_example(i) for i in range(20)]
    rows[3] = _example(3, version="fallback")  # a degraded response (the scorer's fallback list)
    rows[7] = _example(7, features={})  # fallback padding: no features were logged for it
    rows[8] = _example(8, version="fallback", features={})
    records = [r.SerializeToString() for r in rows]
    kept, logged = TE.load_logged_examples(records, drop_fallback=True)
    assert len(kept) == 17 and kept.meta["dropped"] == {"degraded": 2, "fallback_items": 1}
    assert {"i3", "i7", "i8"}.isdisjoint(kept.item_id)
    want = {r.item_id: r.propensity for r in rows}
    np.testing.assert_allclose(logged.propensity, [want[i] for i in kept.item_id])
    assert set(logged.model_version) == {"ranker-v3"} and logged.served.shape == (17, 3)
    part = logged.take(np.array([0, 2]))
    assert part.propensity.tolist() == logged.propensity[[0, 2]].tolist()
    everything = TE.load_training_examples(records)  # the default keeps every row, as before
    assert len(everything) == 20 and everything.meta["dropped"] == {"degraded": 0, "fallback_items": 0}


def test_live_retrain_trains_purchases_with_the_delayed_feedback_likelihood():
    rng = np.random.default_rng(8)
    day = 86_400_000
    n = 20_000
    times = np.sort(rng.integers(0, 20 * day, n))
    delay = rng.exponential(2 * day, n).astype(np.int64)
    now = 20 * day
    bought = (rng.random(n) < 0.05) & (times + delay <= now)  # what the label join has seen
    data = SimpleNamespace(labels=np.stack([bought, bought, bought], axis=1).astype(np.float32),
                           times=times, purchase_delay_ms=np.where(bought, delay, 0))
    mode, why = purchase_labels(data, 7 * day)
    assert mode == "dfm" and "delay CDF" in why
    few = SimpleNamespace(labels=data.labels[:10], times=times[:10], purchase_delay_ms=delay[:10])
    assert purchase_labels(few, 7 * day)[0] == "fnw"  # too few matured purchases to fit F


def test_debiased_ndcg_credits_clicks_low_in_the_incumbents_order():
    """Slates logged in the INCUMBENT's order (a noisy ranker), clicks = examine(position) ·
    p_top: raw click NDCG favours the incumbent (its top rows get looked at more); weighting
    each label by 1 / examine(position) credits the ranker that orders by the true p_top."""
    rng = np.random.default_rng(4)
    requests = 3000
    n = requests * SLATE
    p_top = 1.0 / (1.0 + np.exp(-rng.normal(-2.0, 1.0, n)))
    incumbent = np.log(p_top / (1 - p_top)) + rng.normal(0.0, 1.5, n)
    request = np.repeat(np.arange(requests), SLATE)
    order = np.argsort(-incumbent.reshape(requests, SLATE), axis=1)
    position = np.argsort(order, axis=1).reshape(-1)  # each slate shown in the incumbent's order
    examine = EXAMINE[position]
    click = rng.random(n) < p_top * examine
    labels = np.stack([click, np.zeros(n), np.zeros(n)], axis=1).astype(np.float32)
    probs = np.stack([p_top, 0.3 * p_top, 0.09 * p_top], axis=1)
    policy = P.PromotionPolicy(n_boot=200)
    raw = P.decide(policy, labels, request, position, P.Scored(p_top, probs), P.Scored(incumbent, probs))
    debiased = P.decide(policy, labels, request, position, P.Scored(p_top, probs, examine=examine),
                        P.Scored(incumbent, probs))
    assert debiased["ndcg_gain"] > raw["ndcg_gain"]
    assert debiased["ndcg_gain_ci95"][0] > 0 >= raw["ndcg_gain_ci95"][0]


def test_the_gate_ranks_on_the_slates_a_ranker_ordered_when_there_are_enough():
    from recsys.cli.retrain import MIN_RANKED_REQUESTS, ranked_slates

    rng = np.random.default_rng(2)
    n_req = 4 * MIN_RANKED_REQUESTS
    arm = np.repeat(rng.choice(["model", "popular", "random"], n_req), SLATE)
    request = np.repeat(np.arange(n_req), SLATE)
    labels = np.zeros((n_req * SLATE, 3), dtype=np.float32)
    labels[::SLATE, 0] = 1.0  # every slate has a click
    test = SimpleNamespace(request=request, labels=labels)
    rows, note = ranked_slates(test, SimpleNamespace(arm=arm))
    assert rows is not None and np.array_equal(rows, arm == "model") and "(model)" in note
    few = np.where(request < MIN_RANKED_REQUESTS // 2, arm, "popular")  # too few ranked left
    rows, note = ranked_slates(test, SimpleNamespace(arm=few))
    assert rows is None and "only" in note and "every slate" in note
    rows, note = ranked_slates(test, SimpleNamespace(arm=np.full(arm.shape, "model")))  # no A/B
    assert rows is None and "all ranked" in note
