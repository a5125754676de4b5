"""Calibration: PAV against brute force, Platt/isotonic fixing a miscalibrated score on held-out
data (ECE before/after printed), serialisation, the checkpoint round trip of calibrators."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from models import calibration as C
from models.metrics import ece


def _brute_isotonic(y: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit by trying every partition into blocks (tiny n only)."""
    n = y.size
    best, best_fit = np.inf, None
    for cuts in itertools.product([0, 1], repeat=n - 1):
        bounds = [0, *[i + 1 for i, c in enumerate(cuts) if c], n]
        fit = np.concatenate([np.full(b - a, y[a:b].mean()) for a, b in itertools.pairwise(bounds)])
        if np.all(np.diff(fit) >= -1e-12):
            err = float(((fit - y) ** 2).sum())
            if err < best - 1e-12:
                best, best_fit = err, fit
    assert best_fit is not None
    return best_fit


def test_pav_matches_brute_force_and_is_monotone():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.random(8).round(2)
        means, weights, starts = C.pav(y)
        fit = np.repeat(means, weights.astype(int))
        assert np.all(np.diff(means) > 0)
        assert starts[0] == 0 and weights.sum() == y.size
        np.testing.assert_allclose(fit, _brute_isotonic(y), atol=1e-9)


def _miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True probabilities, labels, and an over-confident, shifted model score."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.5, 1.0, n)
    p_true = 1 / (1 + np.exp(-z))
    y = (rng.random(n) < p_true).astype(float)
    score = 1 / (1 + np.exp(-(1.8 * z + 1.2)))  # too confident and too high
    return p_true, y, score


@pytest.mark.parametrize("method", ["platt", "isotonic", "auto"])
def test_calibration_fixes_a_miscalibrated_score_on_held_out_data(method):
    _, y_fit, s_fit = _miscalibrated(40_000, seed=1)
    _, y_test, s_test = _miscalibrated(40_000, seed=2)
    cal = C.fit_calibrator(s_fit, y_fit, method)
    before, after = ece(y_test, s_test), ece(y_test, cal.predict(s_test))
    before_a, after_a = C.ece_adaptive(y_test, s_test), C.ece_adaptive(y_test, cal.predict(s_test))
    print(f"\n{method} ({cal.method}): ECE {before:.4f} -> {after:.4f}, "
          f"equal-mass ECE {before_a:.4f} -> {after_a:.4f}")
    assert before > 0.03
    assert after < 0.01 and after_a < 0.01
    p = cal.predict(np.linspace(0, 1, 101))
    assert np.all(np.diff(p) >= -1e-12) and p.min() > 0 and p.max() < 1  # monotone, finite logloss


def test_platt_recovers_the_inverse_transform():
    _, y, s = _miscalibrated(100_000, seed=3)
    cal = C.Platt.fit(s, y)
    # score logit = 1.8 z + 1.2, truth = z  ->  a = 1/1.8, b = -1.2/1.8
    assert cal.a == pytest.approx(1 / 1.8, abs=0.03)
    assert cal.b == pytest.approx(-1.2 / 1.8, abs=0.08)


def test_serialisation_round_trip_is_exact_and_json_safe():
    _, y, s = _miscalibrated(5_000, seed=4)
    for method in ("platt", "isotonic", "none"):
        cal = C.fit_calibrator(s, y, method)
        d = json.loads(json.dumps(cal.to_dict()))
        back = C.calibrator_from_dict(d)
        np.testing.assert_array_equal(back.predict(s), cal.predict(s))
    with pytest.raises(ValueError):
        C.calibrator_from_dict({"method": "magic"})


def test_auto_falls_back_to_platt_with_too_few_positives():
    y = np.zeros(400)
    y[[5, 300]] = 1
    cal = C.fit_calibrator(np.linspace(0.01, 0.2, 400), y, "auto")
    assert cal.method == "platt"
    assert np.isfinite(cal.predict([0.1])).all()


def test_reliability_curve_and_summary():
    p_true, y, _ = _miscalibrated(20_000, seed=5)
    mp, rate, counts = C.reliability_curve(y, p_true, 10)
    assert counts.sum() == y.size and np.all(np.diff(mp) >= 0)
    assert np.max(np.abs(mp - rate)) < 0.03  # the truth is calibrated
    s = C.summary(y, p_true)
    assert s["ratio"] == pytest.approx(1.0, abs=0.05) and s["ece"] < 0.01
