"""Calibration: the scikit-learn isotonic fit against brute force and a PAV written here, Platt
against the exact logistic maximum likelihood and known parameters, Platt/isotonic fixing a
miscalibrated score on held-out data (ECE before/after printed), serialisation, dicts written by
the earlier hand-written fitters, and a scorer that never imports scikit-learn."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models import calibration as C
from models.offline_metrics import ece


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


def _pav_reference(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Isotonic least squares by pool-adjacent-violators, written plainly: tied x pooled first,
    then adjacent blocks merged while their means decrease. Returns the fit at each x."""
    ux, inv = np.unique(x, return_inverse=True)
    blocks = [[float(y[inv == i].sum()), float((inv == i).sum())] for i in range(ux.size)]
    members = [[i] for i in range(ux.size)]
    i = 0
    while i < len(blocks) - 1:
        if blocks[i][0] / blocks[i][1] > blocks[i + 1][0] / blocks[i + 1][1]:
            blocks[i] = [blocks[i][0] + blocks[i + 1][0], blocks[i][1] + blocks[i + 1][1]]
            members[i] += members.pop(i + 1)
            blocks.pop(i + 1)
            i = max(i - 1, 0)
        else:
            i += 1
    level = np.empty(ux.size)
    for (total, count), mem in zip(blocks, members, strict=True):
        level[mem] = total / count
    return level[inv]


def test_isotonic_fit_matches_brute_force_on_tiny_sets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.permutation(8) / 10 + 0.05  # distinct scores, shuffled (not time-sorted)
        y = (rng.random(8) < x).astype(float)
        cal = C.Isotonic.fit(x, y)
        fit = cal.predict(np.sort(x))
        brute = np.clip(_brute_isotonic(y[np.argsort(x)]), C.EPS, 1 - C.EPS)
        np.testing.assert_allclose(fit, brute, atol=1e-12)
        assert np.all(np.diff(cal.x) > 0) and np.all(np.diff(cal.y) >= 0)  # strictly increasing x


def test_isotonic_fit_matches_pav_with_ties_and_predicts_like_sklearn():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(7)
    x = rng.uniform(0.0, 0.4, 3_000).round(3)  # about 400 distinct scores: many ties
    y = (rng.random(x.size) < 0.1 + x).astype(float)
    cal = C.Isotonic.fit(x, y)
    ref = _pav_reference(x, y)
    assert np.all(np.diff(ref[np.argsort(x)]) >= 0)
    np.testing.assert_allclose(cal.predict(x), np.clip(ref, C.EPS, 1 - C.EPS), atol=1e-12)
    # serving (numpy interp over the stored thresholds) = sklearn's predict, out of range too
    ir = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(x, y)
    grid = np.linspace(-0.5, 1.5, 4_001)
    np.testing.assert_allclose(cal.predict(grid), np.clip(ir.predict(grid), C.EPS, 1 - C.EPS), atol=1e-12)


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


def test_platt_is_the_logistic_maximum_likelihood():
    """Against the unpenalised log-loss minimum found by scipy (BFGS, exact gradient): the fit's
    tiny ridge (C = 1e4) moves it by ~1e-7 on 2,000 rows; sklearn's default C = 1 by ~5e-4."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    z = rng.normal(-1.5, 1.0, 2_000)
    y = (rng.random(z.size) < 1 / (1 + np.exp(-z))).astype(float)
    s = 1 / (1 + np.exp(-(1.8 * z + 1.2)))
    x = C._logit(s)

    def nll(w: np.ndarray) -> float:
        u = w[0] * x + w[1]
        return float(np.sum(np.logaddexp(0, u) - y * u))

    def grad(w: np.ndarray) -> np.ndarray:
        r = 1 / (1 + np.exp(-(w[0] * x + w[1]))) - y
        return np.array([np.dot(r, x), r.sum()])

    ref = minimize(nll, np.array([1.0, 0.0]), jac=grad, method="BFGS", options={"gtol": 1e-10}).x
    cal = C.Platt.fit(s, y)
    np.testing.assert_allclose([cal.a, cal.b], ref, atol=1e-6)


def test_platt_on_one_class_or_separable_data_stays_finite_and_monotone():
    p = np.linspace(0.01, 0.3, 500)
    for y, side in ((np.zeros(500), "low"), (np.ones(500), "high")):
        cal = C.Platt.fit(p, y)
        q = cal.predict(p)
        assert cal.a == 1.0 and np.all(np.diff(q) >= 0)  # the ranking is kept
        assert (q.mean() < 1e-4) if side == "low" else (q.mean() > 1 - 1e-4)
    cal = C.Platt.fit(p, (p > 0.15).astype(float))  # perfectly separable: large but finite slope
    assert 10 < cal.a < 1e4 and np.isfinite(cal.b)
    with pytest.raises(ValueError, match="as many labels"):
        C.Platt.fit(p, np.zeros(3))


def test_serialisation_round_trip_is_exact_and_json_safe():
    _, y, s = _miscalibrated(5_000, seed=4)
    for method in ("platt", "isotonic", "none"):
        cal = C.fit_calibrator(s, y, method)
        d = json.loads(json.dumps(cal.to_dict()))
        back = C.calibrator_from_dict(d)
        np.testing.assert_array_equal(back.predict(s), cal.predict(s))
    with pytest.raises(ValueError):
        C.calibrator_from_dict({"method": "magic"})


def test_dicts_from_the_hand_written_fitters_still_load_and_predict():
    """The on-disk format did not change: dicts as the earlier PAV / Newton code wrote them (PAV
    blocks as both ends, so repeated x where a block has one score) give the same predictions."""
    iso = {"method": "isotonic", "x": [0.02, 0.05, 0.05, 0.1, 0.2, 0.4], "y": [0.0, 0.0, 0.1, 0.1, 0.3, 0.3]}
    cal = C.calibrator_from_dict(iso)
    got = cal.predict([0.0, 0.02, 0.035, 0.075, 0.15, 0.3, 0.9])
    np.testing.assert_allclose(got, [C.EPS, C.EPS, C.EPS, 0.1, 0.2, 0.3, 0.3], atol=1e-12)
    assert cal.to_dict() == iso
    platt = {"method": "platt", "a": 0.56, "b": -0.66}
    cal = C.calibrator_from_dict(platt)
    np.testing.assert_allclose(cal.predict([0.1]), 1 / (1 + np.exp(-(0.56 * np.log(0.1 / 0.9) - 0.66))))
    assert cal.to_dict() == platt
    assert C.calibrator_from_dict({"method": "none"}).to_dict() == {"method": "none"}


def test_serving_path_does_not_import_sklearn():
    code = (
        "import sys\n"
        "import models.ranker_runtime\n"
        "from models.calibration import calibrator_from_dict\n"
        "for d in ({'method': 'isotonic', 'x': [0.1, 0.2], 'y': [0.0, 1.0]},\n"
        "          {'method': 'platt', 'a': 1.0, 'b': 0.0}):\n"
        "    calibrator_from_dict(d).predict([0.15])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout


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


def test_platt_fit_examined_recovers_the_top_slot_map_of_a_debiased_model():
    """Labels observed at positions examined with 1/log2(pos+2); the model's top-slot score is
    a known monotone distortion of the true top-slot probability. ``fit_examined`` recovers
    the map (slope 2, intercept -1.4 here), so calibrated · examine is calibrated where shown;
    Platt fitted on score · examine and applied to the score is not."""
    rng = np.random.default_rng(0)
    n = 200_000
    z = rng.normal(-3.0, 1.0, n)  # true top-slot logit
    examine = 1.0 / np.log2(rng.integers(0, 10, n) + 2.0)
    y = (rng.random(n) < examine / (1.0 + np.exp(-z))).astype(np.float64)
    score = 1.0 / (1.0 + np.exp(-(0.5 * z + 0.7)))  # z = 2·logit(score) - 1.4
    fitted = C.Platt.fit_examined(score, y, examine)
    assert abs(fitted.a - 2.0) < 0.1 and abs(fitted.b + 1.4) < 0.2
    assert ece(y, fitted.predict(score) * examine) < 0.002
    product = C.Platt.fit(np.clip(score * examine, 1e-6, 1 - 1e-6), y)
    assert ece(y, product.predict(score) * examine) > 5 * ece(y, fitted.predict(score) * examine)
    with pytest.raises(ValueError, match="as many"):
        C.Platt.fit_examined(score[:5], y[:4], examine[:5])
