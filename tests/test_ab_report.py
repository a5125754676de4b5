"""`recsys ab report`: user-clustered ratio statistics (checked against replications and a
bootstrap computed here), weighted arm assignment, the ab_weights setting, and the report read
end to end from the impressions and training-examples topics of the embedded broker."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core import kafka
from core.settings import SettingsError, load_settings, settings_to_env
from features.ranking_features import assemble
from models.ab_stats import ABLog, lift_estimate, ratio_estimate, report
from online.servicer import assign_arm
from proto import codecs, events_pb2
from recsys.cli import main as cli

T0 = 1_750_000_000_000


def _users(rng: np.random.Generator, g: int, a: float = 0.5, b: float = 9.5) -> tuple[np.ndarray, np.ndarray]:
    """(clicks, impressions) per user: heterogeneous users (CTR ~ Beta(a, b)), impressions per user
    independent of the CTR, so the true rate is a / (a + b)."""
    n = 1 + rng.poisson(20, g)
    return rng.binomial(n, rng.beta(a, b, g)), n


# ----------------------------------------------------------------------------------------
# statistics


def test_clustered_ci_covers_the_true_rate_and_the_naive_one_does_not():
    rng = np.random.default_rng(11)
    true, reps = 0.05, 400
    covered = naive_covered = 0
    ratio = []
    for _ in range(reps):
        y, x = _users(rng, 400)
        est = ratio_estimate(y.tolist(), x.tolist())
        assert est.ci95 is not None and est.value is not None and est.se is not None
        covered += est.ci95[0] <= true <= est.ci95[1]
        naive = math.sqrt(est.value * (1 - est.value) / x.sum())  # impressions as independent
        naive_covered += abs(est.value - true) <= 1.96 * naive
        ratio.append(est.se / naive)
    assert 0.91 <= covered / reps <= 0.98, covered / reps
    assert naive_covered / reps < 0.85, naive_covered / reps  # heterogeneous users: too narrow
    assert min(ratio) > 1.2  # the clustered SE is larger every time


def test_clustered_se_matches_a_user_bootstrap():
    rng = np.random.default_rng(5)
    g = 2000
    clicks, imps = _users(rng, g)
    purchases = rng.binomial(clicks, 0.1)
    revenue = np.array([rng.lognormal(3.0, 1.0, k).sum() for k in purchases])
    idx = rng.integers(0, g, size=(2000, g))  # resample users, not impressions
    for y, x, scale in ((clicks, imps, 1.0), (revenue, imps, 1000.0), (purchases, clicks, 1.0)):
        boot = scale * y[idx].sum(axis=1) / x[idx].sum(axis=1)
        est = ratio_estimate(y.tolist(), x.tolist(), scale=scale)
        assert est.value == pytest.approx(scale * y.sum() / x.sum())
        assert est.se == pytest.approx(boot.std(ddof=1), rel=0.1)


def test_lift_ci_covers_the_true_lift():
    rng = np.random.default_rng(3)
    reps, covered = 400, 0
    true_lift = (0.6 / 10.0) / (0.5 / 10.0) - 1  # Beta(0.6, 9.4) over Beta(0.5, 9.5): +20%
    for _ in range(reps):
        yc, xc = _users(rng, 500, 0.5, 9.5)
        ya, xa = _users(rng, 500, 0.6, 9.4)
        lift = lift_estimate(ratio_estimate(ya.tolist(), xa.tolist()),
                             ratio_estimate(yc.tolist(), xc.tolist()))
        assert lift.ci95 is not None and lift.value is not None
        assert lift.ci95[0] < lift.value < lift.ci95[1]
        covered += lift.ci95[0] <= true_lift <= lift.ci95[1]
    assert 0.91 <= covered / reps <= 0.985, covered / reps


def test_estimates_without_enough_data_have_no_interval():
    assert ratio_estimate([], []).value is None
    one = ratio_estimate([3], [10])
    assert one.value == pytest.approx(0.3) and one.se is None and one.ci95 is None
    zero = ratio_estimate([0, 0], [5, 5])
    assert zero.value == 0.0 and lift_estimate(ratio_estimate([1, 2], [5, 5]), zero).value is None
    with pytest.raises(ValueError):
        ratio_estimate([1], [1, 2])


# ----------------------------------------------------------------------------------------
# weighted assignment and the setting


def test_assignment_respects_the_weights():
    users = [f"u{i}" for i in range(20_000)]
    arms = ("model", "popular", "random")
    for weights in ((0.9, 0.05, 0.05), (95.0, 3.0, 2.0), ()):
        got = Counter(assign_arm(u, "exp1", arms, weights) for u in users)
        shares = np.array(weights or (1.0,) * 3) / sum(weights or (1.0,) * 3)
        for arm, share in zip(arms, shares, strict=True):
            sigma = math.sqrt(share * (1 - share) / len(users))
            assert abs(got[arm] / len(users) - share) < 4 * sigma, (weights, arm, got)
    assert all(assign_arm(u, "exp1", arms, (0.9, 0.05, 0.05)) ==
               assign_arm(u, "exp1", arms, (0.9, 0.05, 0.05)) for u in users[:500])  # deterministic
    assert {assign_arm(u, "exp1", ("model",), ()) for u in users[:100]} == {"model"}
    with pytest.raises(ValueError):
        assign_arm("u1", "exp1", arms, (1.0, 1.0))


def test_ramping_a_challenger_only_moves_users_into_it():
    users = [f"u{i}" for i in range(20_000)]
    arms = ("model", "heuristic")
    before = {u: assign_arm(u, "ramp", arms, (95.0, 5.0)) for u in users}
    after = {u: assign_arm(u, "ramp", arms, (90.0, 10.0)) for u in users}
    assert all(after[u] == "heuristic" for u in users if before[u] == "heuristic")
    moved = sum(before[u] != after[u] for u in users) / len(users)
    assert abs(moved - 0.05) < 4 * math.sqrt(0.05 * 0.95 / len(users))


def test_ab_weights_setting(tmp_path: Path):
    s = load_settings(env={"RECSYS_AB_ARMS": "model,popular", "RECSYS_AB_WEIGHTS": "0.95, 0.05"})
    assert s.ab_weights == (0.95, 0.05)
    assert load_settings(env=settings_to_env(s, base={})).ab_weights == s.ab_weights  # child processes
    assert load_settings(env={}).ab_weights == ()
    cfg = tmp_path / "s.toml"
    cfg.write_text('ab_arms = ["model", "popular", "random"]\nab_weights = [90, 5, 5]\n')
    assert load_settings(env={}, config_file=cfg).ab_weights == (90.0, 5.0, 5.0)
    with pytest.raises(SettingsError, match=r"ab_weights has 2 weights for 1 ab_arms"):
        load_settings(env={"RECSYS_AB_WEIGHTS": "1,2"})
    for bad in ("1,0", "1,-2", "1,inf"):
        with pytest.raises(SettingsError, match=r"ab_weights must all be finite and > 0"):
            s.replace(ab_weights=bad)
    with pytest.raises(SettingsError, match="ab_weights"):
        s.replace(ab_weights="1,lots")
    with pytest.raises(SettingsError, match="ab_weights"):
        s.replace(ab_weights=[True, 1.0])


# ----------------------------------------------------------------------------------------
# the logs: synthetic records with the truth kept beside them


@dataclass
class Truth:
    """What one generated request should count as (computed while generating)."""

    arm: str
    user: str
    time_ms: int
    items: int
    degraded: bool
    labelled: bool
    clicks: int = 0
    carts: int = 0
    purchases: int = 0
    revenue: float = 0.0


def synthetic_logs(seed: int, n_users: int, arms: tuple[str, ...], weights: tuple[float, ...]
                   ) -> tuple[list[events_pb2.Impression], list[events_pb2.TrainingExample], list[Truth]]:
    rng = np.random.default_rng(seed)
    prices = {f"i{j}": round(float(np.exp(rng.uniform(1.0, 5.0))), 2) for j in range(30)}
    feats = {i: codecs.pack_features(assemble(
        item_id=i, catalog={"category": "c", "price": p}, item_stats=None, user_features=None,
        session_affinity={}, last_viewed=frozenset(), retrieval={"popular": 0.5},
        context={"surface": "home"}, now_ms=T0, half_life_s=86400.0)) for i, p in prices.items()}
    imps: list[events_pb2.Impression] = []
    exs: list[events_pb2.TrainingExample] = []
    truth: list[Truth] = []
    for u in range(n_users):
        user = f"u{u}"
        arm = assign_arm(user, "default", arms, weights)
        taste = rng.beta(0.5, 6.0)
        for r in range(int(rng.integers(1, 5))):
            rid, t = f"{user}-{r}", T0 + int(rng.integers(0, 3_600_000))
            k = int(rng.integers(3, 8))
            t_row = Truth(arm, user, t, k, degraded=bool(rng.random() < 0.05),
                          labelled=bool(rng.random() < 0.9))
            truth.append(t_row)
            imp = events_pb2.Impression(request_id=rid, user_id=user, event_time_ms=t,
                                        experiment="default", arm=arm, degraded=t_row.degraded)
            for pos, item in enumerate(rng.choice(sorted(prices), size=k, replace=False)):
                imp.items.add(item_id=item, position=pos, features=b"" if t_row.degraded else feats[item])
            imps += [imp] * (2 if rng.random() < 0.05 else 1)  # some delivered twice
            if not t_row.labelled:
                continue
            for it in imp.items:
                click = bool(rng.random() < taste)
                cart = click and bool(rng.random() < 0.4)
                purchase = cart and bool(rng.random() < 0.5)
                ex = events_pb2.TrainingExample(
                    example_id=f"{rid}/{it.item_id}", request_id=rid, user_id=user, item_id=it.item_id,
                    impression_time_ms=t, position=it.position, features=it.features, arm=arm,
                    click=click, add_to_cart=cart, purchase=purchase, version=1)
                if cart and rng.random() < 0.5:  # delayed: version 1 without it, then a correction
                    first = events_pb2.TrainingExample()
                    first.CopyFrom(ex)
                    first.add_to_cart = first.purchase = False
                    ex.version, ex.correction = 2, True
                    exs += [ex, first] if rng.random() < 0.3 else [first, ex]  # any order
                else:
                    exs.append(ex)
                t_row.clicks += click
                t_row.carts += cart
                t_row.purchases += purchase
                t_row.revenue += prices[it.item_id] if purchase and not t_row.degraded else 0.0
    # another experiment's request (with its example) and an example whose request is not logged
    imps.append(events_pb2.Impression(request_id="other", user_id="u0", event_time_ms=T0,
                                      experiment="other", arm=arms[0]))
    imps[-1].items.add(item_id="i0")
    exs.append(events_pb2.TrainingExample(example_id="other/i0", request_id="other", arm=arms[0],
                                          impression_time_ms=T0, click=True, version=1))
    exs.append(events_pb2.TrainingExample(example_id="ghost/i0", request_id="ghost", arm=arms[0],
                                          impression_time_ms=T0, click=True, version=1))
    return imps, exs, truth


def expected(truth: list[Truth], arm: str, since_ms: int = 0) -> dict[str, float]:
    rows = [t for t in truth if t.arm == arm and t.time_ms >= since_ms]
    ok = [t for t in rows if not t.degraded]
    lab = [t for t in ok if t.labelled]
    return {
        "users": len({t.user for t in lab}), "users_seen": len({t.user for t in rows}),
        "requests": len(ok), "impressions": sum(t.items for t in ok),
        "labelled_requests": len(lab), "labelled_impressions": sum(t.items for t in lab),
        "unlabelled_impressions": sum(t.items for t in ok if not t.labelled),
        "degraded_requests": len(rows) - len(ok), "degraded_impressions": sum(t.items for t in rows) -
        sum(t.items for t in ok), "clicks": sum(t.clicks for t in lab), "carts": sum(t.carts for t in lab),
        "purchases": sum(t.purchases for t in lab), "revenue": sum(t.revenue for t in lab),
    }


def _check_arm(got: dict, want: dict[str, float]) -> None:
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    n, m = want["labelled_impressions"], got["metrics"]
    assert m["ctr"]["value"] == pytest.approx(want["clicks"] / n)
    assert m["cart_rate"]["value"] == pytest.approx(want["carts"] / n)
    assert m["cvr"]["value"] == pytest.approx(want["purchases"] / want["clicks"])
    assert m["revenue_per_mille"]["value"] == pytest.approx(1000 * want["revenue"] / n, rel=1e-6)
    lo, hi = m["ctr"]["ci95"]
    assert lo < m["ctr"]["value"] < hi


def test_report_from_records_counts_what_the_truth_says():
    arms, weights = ("model", "popular"), (0.75, 0.25)
    imps, exs, truth = synthetic_logs(seed=2, n_users=300, arms=arms, weights=weights)
    since = T0 + 1_800_000
    for since_ms in (0, since):
        log = ABLog(experiment="default", since_ms=since_ms)
        for ex in exs:  # examples before impressions: the order does not matter
            log.add_example(ex.SerializeToString())
        for imp in imps:
            log.add_impression(imp.SerializeToString())
        rep = report(log, "model", arms, weights)
        assert list(rep["arms"]) == list(arms)
        assert rep["skipped_requests"] == 1 + sum(t.time_ms < since_ms for t in truth)  # + "other"
        for arm in arms:
            _check_arm(rep["arms"][arm], expected(truth, arm, since_ms))
        # "ghost" (served at T0); "other" is another experiment's
        assert rep["arms"]["model"]["orphan_examples"] == (since_ms == 0)
        assert rep["arms"]["model"]["expected_share"] == pytest.approx(0.75)
    ctr = {arm: rep["arms"][arm]["metrics"]["ctr"]["value"] for arm in arms}
    assert rep["arms"]["popular"]["lift"]["ctr"]["value"] == pytest.approx(ctr["popular"] / ctr["model"] - 1)
    assert rep["arms"]["model"]["lift"] is None


def test_ab_report_end_to_end_from_the_broker(settings, capsys, monkeypatch):
    for var in [v for v in os.environ if v.startswith("RECSYS_")]:
        monkeypatch.delenv(var)
    arms, weights = ("model", "popular"), (0.7, 0.3)
    imps, exs, truth = synthetic_logs(seed=9, n_users=200, arms=arms, weights=weights)
    p = kafka.producer(settings)
    for imp in imps:
        p.produce(settings.topic("impressions"), key=imp.user_id.encode(), value=imp.SerializeToString())
    for ex in exs:
        p.produce(settings.topic("training"), key=ex.request_id.encode(), value=ex.SerializeToString())
    assert p.flush(10) == 0
    argv = ["--state-dir", str(settings.state_dir), "--set", f"kafka_bootstrap={settings.kafka_bootstrap}",
            "--set", f"topic_prefix={settings.topic_prefix}", "--set", "ab_arms=model,popular",
            "--set", "ab_weights=0.7,0.3", "ab", "report"]
    assert cli.main([*argv, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["impression_records"] == len(imps) and rep["example_records"] == len(exs)
    for arm in arms:
        _check_arm(rep["arms"][arm], expected(truth, arm))
        users = expected(truth, arm)["users_seen"]
        assert rep["arms"][arm]["user_share"] == pytest.approx(users / len({t.user for t in truth}))
    assert cli.main([*argv, "--control", "popular"]) == 0  # the people's table
    out = capsys.readouterr().out
    assert "lift over popular" in out and "model" in out and "CTR [95% CI]" in out
