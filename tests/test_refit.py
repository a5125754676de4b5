"""The refit on train + valid (``models.ranker_fit.refit_on``, ``recsys retrain --refit``): the
newest rows before the test slice reach the weights. Synthetic data, one thread."""

from __future__ import annotations

import numpy as np
import torch

from features.ranking_features import DENSE, SPARSE
from models import offline_metrics as metrics
from models.ranker_eval import predict_raw
from models.ranker_fit import RankerTrainConfig, fit, make_model, refit_on
from models.ranking_dataset import RankingData, time_split

CPU = torch.device("cpu")
K = 10


def drifting_logs(n_requests: int = 1500, seed: int = 0) -> RankingData:
    """p_click = sigmoid(-1.5 + x0 + 2·x3·new): x3 starts to matter only in the newest 35% of
    the requests (a taste that appeared lately), i.e. in the validation and test slices of a
    70 / 15 / 15 split, never in the training one."""
    rng = np.random.default_rng(seed)
    n = n_requests * K
    request = np.repeat(np.arange(n_requests), K)
    dense = rng.normal(size=(n, len(DENSE))).astype(np.float32)
    new = request >= int(n_requests * 0.65)
    p = 1.0 / (1.0 + np.exp(-(-1.5 + dense[:, 0] + 2.0 * dense[:, 3] * new)))
    click = rng.random(n) < p
    return RankingData(sparse=np.zeros((n, len(SPARSE)), np.int64), dense=dense,
                       labels=np.stack([click, click & (rng.random(n) < 0.3), np.zeros(n, bool)],
                                       1).astype(np.float32),
                       times=request * 1000, purchase_delay_ms=np.zeros(n, np.int64), request=request,
                       position=np.tile(np.arange(K), n_requests), p_click_true=p.astype(np.float32),
                       item_id=np.array([f"i{j}" for j in range(n)]))


def test_concat_keeps_every_row_in_order():
    data = drifting_logs(50)
    tr, va, _te = time_split(data.times, 0.15, 0.15)
    both = RankingData.concat(data.take(tr), data.take(va))
    assert len(both) == tr.size + va.size and len(both) < len(data)
    np.testing.assert_array_equal(both.times, data.times[np.concatenate([tr, va])])
    np.testing.assert_array_equal(both.dense, data.dense[np.concatenate([tr, va])])


def test_refit_learns_what_only_the_validation_slice_shows():
    torch.set_num_threads(1)
    data = drifting_logs()
    tr, va, te = time_split(data.times, 0.15, 0.15)
    train, valid, test = data.take(tr), data.take(va), data.take(te)
    tcfg = RankerTrainConfig(epochs=4, batch_size=256, lr=3e-3, patience=2, seed=0,
                             position_debias=False, log_every_s=1e9)

    def build(rows: RankingData):
        return make_model("mmoe", rows, dropout=0.0, seed=0, embed_dim=4, hidden=(16,), n_experts=2)

    first_model = build(train)
    first = fit(first_model, train, valid, tcfg, CPU, log=lambda _m: None)
    refit, res = refit_on(build, train, valid, first, tcfg, CPU, log=lambda _m: None)
    assert res.epochs_run == first.best_epoch and len(res.history) == first.best_epoch
    # standardised on the rows it trained on (train + valid), not on the first fit's
    both = np.concatenate([train.dense, valid.dense]).astype(np.float64)
    np.testing.assert_allclose(refit.config.dense_mean, both.mean(0), rtol=1e-5, atol=1e-6)
    y = test.labels[:, 0]
    auc_first = metrics.auc(y, predict_raw(first_model, test, CPU)[:, 0])
    auc_refit = metrics.auc(y, predict_raw(refit, test, CPU)[:, 0])
    print(f"\ntest click AUC: early-stopped on train {auc_first:.4f}, refit on train + valid {auc_refit:.4f}")
    assert auc_refit > auc_first + 0.03
