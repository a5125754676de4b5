"""Delayed feedback on simulated purchase delays: observed at a cutoff, the naive CVR is biased
DOWN; the documented corrections (delay-CDF likelihood / ratio with the delay distribution
estimated from matured data; fake-negative weighting on the streaming data) are unbiased
within a measured tolerance. Numbers are printed (pytest -s)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import delayed_feedback as DF

DAY = 86_400_000
WINDOW = 7 * DAY
N = 200_000


@pytest.fixture(scope="module")
def world():
    """Impressions over 14 days; CVR depends on a feature x; delays log-normal (median 12 h,
    long tail of days, like the simulator); a purchase after the 7-day window is not attributed."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(11)
    t = rng.integers(0, 14 * DAY, N)
    x = rng.normal(0, 1, N)
    p = 1 / (1 + np.exp(-(-3.0 + 0.8 * x)))
    delay = (12 * 3_600_000 * np.exp(1.3 * rng.standard_normal(N))).astype(np.int64)
    y = (rng.random(N) < p) & (delay <= WINDOW)  # the eventual, attributed truth
    cutoff = 14 * DAY
    y_obs = y & (t + delay <= cutoff)
    elapsed = cutoff - t
    return {"t": t, "x": x, "y": y.astype(float), "y_obs": y_obs.astype(float), "delay": delay,
            "elapsed": elapsed, "cutoff": cutoff}


def _fit_logistic(x, loss_fn, steps=400):
    """p(x) = sigmoid(a + b x) fitted by full-batch Adam on a per-example loss of log p."""
    xt = torch.tensor(x, dtype=torch.float32)
    w = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(steps):
        logp = torch.nn.functional.logsigmoid(w[0] + w[1] * xt)
        loss = loss_fn(logp).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return torch.sigmoid(w[0] + w[1] * xt).numpy()


def test_naive_cvr_is_biased_down_and_corrected_estimates_are_not(world):
    true = world["y"].mean()
    naive = DF.naive_rate(world["y_obs"])
    delay = DF.DelayCDF.from_matured(world["t"], world["y_obs"], world["delay"], world["cutoff"], WINDOW)
    f = delay(world["elapsed"])
    ratio, dfm = DF.ratio_rate(world["y_obs"], f), DF.dfm_rate(world["y_obs"], f)
    se = np.sqrt(true * (1 - true) / N) / true  # relative standard error of the true rate
    print(f"\ntrue CVR {true:.5f} (rel. s.e. {se:.3%}); observed at the cutoff: naive {naive:.5f} "
          f"({naive / true - 1:+.2%}), ratio {ratio:.5f} ({ratio / true - 1:+.2%}), "
          f"DFM MLE {dfm:.5f} ({dfm / true - 1:+.2%}); delay CDF from {len(delay.delays_ms)} matured "
          f"conversions, median {np.median(delay.delays_ms) / 3.6e6:.1f} h")
    assert naive / true - 1 < -0.05  # biased down by more than 5 %
    assert abs(ratio / true - 1) < 0.025
    assert abs(dfm / true - 1) < 0.025


def test_delayed_likelihood_model_is_calibrated_where_naive_is_not(world):
    y_obs = torch.tensor(world["y_obs"], dtype=torch.float32)
    f = torch.tensor(DF.DelayCDF.from_matured(world["t"], world["y_obs"], world["delay"], world["cutoff"],
                                              WINDOW)(world["elapsed"]), dtype=torch.float32)
    naive = _fit_logistic(world["x"], lambda lp: DF.bce(lp, y_obs))
    dfm = _fit_logistic(world["x"], lambda lp: DF.delayed_nll(lp, y_obs, f))
    true = world["y"].mean()
    hi = world["x"] > 1.0  # high-CVR slice: the correction must hold per segment too
    true_hi = world["y"][hi].mean()
    print(f"\nmodel mean p: naive {naive.mean():.5f} ({naive.mean() / true - 1:+.2%}), delayed-likelihood "
          f"{dfm.mean():.5f} ({dfm.mean() / true - 1:+.2%}) vs true {true:.5f}; x>1 slice: naive "
          f"{naive[hi].mean() / true_hi - 1:+.2%}, corrected {dfm[hi].mean() / true_hi - 1:+.2%}")
    assert naive.mean() / true - 1 < -0.05
    assert abs(dfm.mean() / true - 1) < 0.03
    assert abs(dfm[hi].mean() / true_hi - 1) < 0.05


def test_fake_negative_weighting_on_the_streaming_data(world):
    """The label join's stream: every impression first as a negative, each purchase again as a
    positive. Plain BCE on it learns p/(1+p); FNW learns p."""
    idx, lab, dup = DF.fnw_stream(world["y"])
    assert dup.sum() == world["y"].sum() and idx.size == N + dup.sum() and lab[dup].all()
    x = world["x"][idx]
    yt = torch.tensor(lab)
    plain = _fit_logistic(x, lambda lp: DF.bce(lp, yt))[: N]  # predictions of the original rows
    fnw = _fit_logistic(x, lambda lp: DF.fnw_nll(lp, yt))[: N]
    true = world["y"].mean()
    print(f"\nstream: plain BCE mean p {plain.mean():.5f} ({plain.mean() / true - 1:+.2%}), FNW "
          f"{fnw.mean():.5f} ({fnw.mean() / true - 1:+.2%}) vs true {true:.5f}")
    assert plain.mean() / true - 1 < -0.03
    assert abs(fnw.mean() / true - 1) < 0.025


def test_delay_cdf_needs_matured_data():
    with pytest.raises(ValueError, match="matured"):
        DF.DelayCDF.from_matured([0, 1], [1, 1], [5, 5], cutoff_ms=10, window_ms=WINDOW)
    cdf = DF.DelayCDF.fit([1, 2, 3, 4])
    np.testing.assert_allclose(cdf([0, 1, 2.5, 10]), [0, 0.25, 0.5, 1.0])


def test_training_label_modes_for_the_trainer(world):
    lab = np.stack([world["y"], world["y"], world["y"]], 1).astype(np.float32)
    t, d = world["t"], world["delay"]
    idx, y, w, f, info = DF.training_labels(lab, t, d, "final", WINDOW)
    assert np.array_equal(y, lab) and f.min() == 1 and info == {"labels": "final"}
    _, y, _, _, info = DF.training_labels(lab, t, d, "naive", WINDOW)
    assert y[:, 2].sum() == info["purchases_observed"] < info["purchases_final"] == lab[:, 2].sum()
    _, y, _, f, info = DF.training_labels(lab, t, d, "dfm", WINDOW)
    assert 0 <= f.min() < f.max() <= 1 and 160 < info["maturity_h"] <= 168  # half of ~14 days
    idx, y, w, _, info = DF.training_labels(lab, t, d, "fnw", WINDOW)
    dup = np.arange(idx.size) >= t.size
    assert idx.size == t.size + int(lab[idx[dup], 2].sum()) and (y[dup, 2] == 1).all()
    assert (w[dup, :2] == 0).all() and (w[~dup] == 1).all() and (y[~dup, 2] == 0).all()
    with pytest.raises(ValueError):
        DF.training_labels(lab, t, d, "magic", WINDOW)
