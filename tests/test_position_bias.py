"""Position debiasing (``models.position_bias``, PAL): the examination module, recovering a known
examination curve from logs whose shown order is confounded with the features, ranking by the
true position-free relevance, position-free serving, and the trainer / CLI wiring. Small
synthetic data, one thread."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from core.settings import Settings
from features.ranking_features import DENSE, SPARSE
from models import ranker_runtime as RT
from models.deepfm import RankerConfig
from models.position_bias import (
    PositionAware,
    PositionBias,
    calibrate_and_evaluate_shown,
    click_rate_ratio,
    ndcg_per_request,
)
from models.ranker_eval import predict_raw
from models.ranker_fit import RankerTrainConfig, fit, make_model
from models.ranking_dataset import RankingData, time_split

K = 10  # items per request
CPU = torch.device("cpu")


def true_examine(pos: np.ndarray) -> np.ndarray:
    return 1.0 / np.log2(pos + 2.0)


def confounded_logs(n_requests: int = 2000, seed: int = 0) -> tuple[RankingData, np.ndarray]:
    """Requests of K items with Gaussian dense features. Truth: p_top = sigmoid(-0.8 + x0 +
    0.6·x1) and p_click = examine(pos)·p_top, examine = 1/log2(pos + 2); a cart needs a click
    (0.3), a purchase a cart (0.5). The shown order is a logging policy, x2 + x0 + N(0, 1),
    highest first: position is confounded with a relevant feature (x0) and with one that has
    no effect at all (x2). Returns (rows, p_top per row)."""
    rng = np.random.default_rng(seed)
    n = n_requests * K
    dense = rng.normal(size=(n, len(DENSE))).astype(np.float32)
    p_top = 1.0 / (1.0 + np.exp(-(-0.8 + dense[:, 0] + 0.6 * dense[:, 1])))
    policy = dense[:, 2] + dense[:, 0] + rng.normal(0.0, 1.0, n)
    request = np.repeat(np.arange(n_requests), K)
    position = np.empty(n, np.int64)
    position[np.lexsort((-policy, request))] = np.tile(np.arange(K), n_requests)
    p_click = true_examine(position) * p_top
    click = rng.random(n) < p_click
    cart = click & (rng.random(n) < 0.3)
    purchase = cart & (rng.random(n) < 0.5)
    data = RankingData(sparse=np.zeros((n, len(SPARSE)), np.int64), dense=dense,
                       labels=np.stack([click, cart, purchase], 1).astype(np.float32),
                       times=request * 1000, purchase_delay_ms=np.zeros(n, np.int64), request=request,
                       position=position, p_click_true=p_click.astype(np.float32),
                       item_id=np.array([f"i{j}" for j in range(n)]))
    return data, p_top


@pytest.fixture(scope="module")
def trained():
    """The MMoE trained on the same confounded logs without and with debiasing."""
    torch.set_num_threads(1)
    data, p_top = confounded_logs()
    tr, va, te = time_split(data.times, 0.2, 0.2)
    parts = data.take(tr), data.take(va), data.take(te)
    out = {}
    for debias in (False, True):
        tcfg = RankerTrainConfig(epochs=10, batch_size=256, lr=3e-3, patience=3, seed=0,
                                 position_debias=debias, log_every_s=1e9)
        model = make_model("mmoe", parts[0], dropout=0.0, seed=0, embed_dim=4, hidden=(32, 16),
                           n_experts=2, position_debias=debias)
        out[debias] = (model, fit(model, parts[0], parts[1], tcfg, CPU, log=lambda _m: None))
    return data, p_top[te], parts, out


def test_position_bias_pins_the_top_and_clamps():
    bias = PositionBias(max_positions=5)
    with torch.no_grad():
        bias.theta.copy_(torch.randn(4) * 3)
    log_e = bias.log_examine(torch.tensor([0, 1, 3, 4, 5, 99]))  # [6, 1]
    assert log_e.shape == (6, 1)
    assert log_e[0, 0].item() == 0.0  # examine(0) = 1, whatever the parameters
    assert torch.all(log_e[1:] < 0)  # examine < 1 below the top
    assert log_e[4, 0] == log_e[3, 0] == log_e[5, 0]  # past the last position: the last one
    assert bias.theta.numel() == 4  # no parameter for position 0
    bias.start_at([1.0, 1.7, 0.5])  # a ratio > 1 (noise) is clipped; later positions repeat
    e = np.array(bias.examination())
    assert e[0] == 1.0 and e[1] < 1.0 and np.allclose(e[2:], e[2]) and e[2] < e[1]
    with pytest.raises(ValueError):
        PositionBias(0)


def test_debiasing_recovers_the_examination_curve_and_ranks_by_true_relevance(trained):
    _data, p_top_test, (train, _valid, test), out = trained
    truth = true_examine(np.arange(K))
    learned = np.array(out[True][1].position_bias.examination()[:K])
    start = click_rate_ratio(train.position, train.labels[:, 0], 20)[:K]  # confounded ratios
    print("learned", learned.round(3), "\nstart  ", start.round(3), "\ntrue   ", truth.round(3))
    error = np.abs(learned - truth)
    assert error.max() < 0.15 and error.mean() < 0.08
    assert np.all(np.diff(learned) < 0.05) and learned[1:5].mean() > learned[5:].mean() + 0.05  # falls
    # training moved it away from the confounded click-rate ratios it starts at, towards the truth
    assert error.mean() < 0.6 * np.abs(start - truth).mean()
    ndcg = {debias: ndcg_per_request(test.request, predict_raw(model, test, CPU)[:, 0], p_top_test, K).mean()
            for debias, (model, _res) in out.items()}
    print(f"test NDCG@10 biased {ndcg[False]:.4f} debiased {ndcg[True]:.4f}")
    assert ndcg[True] > ndcg[False]
    assert out[False][1].position_bias is None


def test_serving_is_position_free(trained, tmp_path):
    _data, _p, (_train, valid, test), out = trained
    model, res = out[True]
    cals, heads, _ = calibrate_and_evaluate_shown(model, res.position_bias, valid, test, CPU, "platt")
    assert heads["click"]["raw"]["auc"] > 0.6
    path = RT.save_checkpoint(tmp_path / "m.pt", model, cals, "debiased",
                              meta={"examination": res.position_bias.examination()})
    blob = torch.load(path, weights_only=True)
    assert blob["config"]["position_debias"] is True
    assert not any("bias.theta" in k or k.startswith("ranker.") for k in blob["state_dict"])
    served = RT.load_ranker(path)
    assert served.config.position_debias and served.config == RankerConfig.from_dict(blob["config"])
    p = served.predict_arrays(test.sparse, test.dense)  # [n, 3]: the runtime has no position input
    # the served output is the trained model's at the top position, calibrated
    aware = PositionAware(model, res.position_bias).eval()
    sp, dn = torch.from_numpy(test.sparse), torch.from_numpy(test.dense)
    with torch.no_grad():
        at = {k: aware(sp, dn, torch.full((len(test),), k)).double().exp().numpy() for k in (0, 5)}
    top = np.stack([cals[t].predict(at[0][:, j]) for j, t in enumerate(model.config.tasks)], 1)
    np.testing.assert_allclose(p, top, rtol=1e-5, atol=1e-7)
    assert np.all(at[5][:, 0] < at[0][:, 0])  # the position-aware output is lower further down
    perm = np.random.default_rng(1).permutation(len(test))  # a reshuffled list: same scores
    np.testing.assert_allclose(served.predict_arrays(test.sparse[perm], test.dense[perm]), p[perm],
                               rtol=1e-6, atol=1e-9)


def test_trainer_and_cli_record_the_curve(tmp_path):
    from models.train_ranker import run
    from recsys.cli import train as cli
    from recsys.cli.ranker_options import add_ranker_arguments

    torch.set_num_threads(1)
    retrain_like = argparse.ArgumentParser()
    add_ranker_arguments(retrain_like, standalone=True)  # how `recsys retrain` builds its args
    assert retrain_like.parse_args([]).position_debias is True
    assert retrain_like.parse_args(["--no-position-debias"]).position_debias is False
    data, _ = confounded_logs(n_requests=300, seed=1)
    data.save(tmp_path / "d.npz")
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    args = p.parse_args(["--model", "deepfm_click", "--dataset", str(tmp_path / "d.npz"), "--epochs", "1",
                         "--threads", "1", "--report", str(tmp_path / "r.json"),
                         "--artifacts", str(tmp_path / "art")])
    report = run(Settings(state_dir=str(tmp_path)), args, lambda _log: data, log=lambda _m: None)
    debias = report["models"]["deepfm_click"]["position_debias"]
    assert debias["enabled"] and len(debias["examination"]) == 20 and debias["examination"][0] == 1.0
    assert debias["train_rows_per_position"][K:] == [0] * (20 - K)
    assert report["train_config"]["position_debias"] is True
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["models"]["deepfm_click"]["position_debias"] == debias
    blob = torch.load(tmp_path / "art" / "deepfm_click" / "model.pt", weights_only=True)
    assert blob["config"]["position_debias"] is True and blob["meta"]["examination"] == debias["examination"]
    assert RT.load_ranker(tmp_path / "art" / "deepfm_click" / "model.pt").predict_arrays(
        data.sparse[:4], data.dense[:4]).shape == (4, 3)
