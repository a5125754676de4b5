"""The user x item dot product on the ranker's click logit (models.user_item)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.ranking_features import SPARSE
from models.deepfm import DeepFM, RankerConfig
from models.mmoe import MMoE
from models.offline_metrics import auc
from models.ranker_runtime import load_ranker, save_checkpoint
from models.ranking_dataset import RankingData
from models.train_ranker import RankerTrainConfig, fit, make_model

USER, ITEM = SPARSE.index("user_id"), SPARSE.index("item_id")


def _mmoe(dim: int, seed: int = 0) -> MMoE:
    torch.manual_seed(seed)
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"), hidden=(16, 8), user_item_dim=dim)
    m = MMoE(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


def test_dot_moves_only_the_click_logit_by_the_user_item_product():
    m = _mmoe(4)
    gen = torch.Generator().manual_seed(3)
    sparse = torch.randint(0, 2**31, (64, len(SPARSE)), generator=gen)
    dense = torch.randn(64, len(m.config.dense), generator=gen)
    assert m.user_item is not None
    with torch.inference_mode():
        with_dot = m.logits(sparse, dense)
        dot = m.user_item(sparse)
        ui, m.user_item = m.user_item, None
        without = m.logits(sparse, dense)
    m.user_item = ui
    torch.testing.assert_close(with_dot[:, 1:], without[:, 1:])
    torch.testing.assert_close(with_dot[:, 0] - without[:, 0], dot[:, 0])
    # the dot reads exactly the user and item columns: other fields do not change it
    other = sparse.clone()
    other[:, [j for j in range(len(SPARSE)) if j not in (USER, ITEM)]] += 17
    with torch.inference_mode():
        torch.testing.assert_close(m.user_item(other), dot)
    # and a different user does
    moved = sparse.clone()
    moved[:, USER] += 1
    with torch.inference_mode():
        assert not torch.allclose(m.user_item(moved), dot)


def test_needs_both_fields():
    with pytest.raises(ValueError, match="user_id"):
        DeepFM(RankerConfig(sparse=("item_id", "category"), buckets=(64, 8), user_item_dim=4))


def test_checkpoint_round_trip_keeps_the_dot(tmp_path):
    m = _mmoe(4, seed=1)
    path = save_checkpoint(tmp_path / "r.pt", m, {}, "v-ui")
    gen = torch.Generator().manual_seed(4)
    sparse = torch.randint(0, 2**31, (10, len(SPARSE)), generator=gen)
    dense = torch.randn(10, len(m.config.dense), generator=gen)
    for frozen in (False, True):
        r = load_ranker(path, frozen=frozen, bf16=False)
        assert r.config.user_item_dim == 4
        with torch.inference_mode():
            torch.testing.assert_close(r.model(sparse, dense), m(sparse, dense), rtol=5e-5, atol=1e-5)


def _interaction_data(n_users: int, n_items: int, rows: int, seed: int) -> RankingData:
    """Clicks driven only by <user taste, item style>: no feature but the two ids carries it."""
    rng = np.random.default_rng(seed)
    taste, style = rng.normal(size=(n_users, 4)), rng.normal(size=(n_items, 4))
    u, i = rng.integers(0, n_users, rows), rng.integers(0, n_items, rows)
    p = 1 / (1 + np.exp(-(1.5 * (taste[u] * style[i]).sum(1) - 1.0)))
    click = (rng.random(rows) < p).astype(np.float32)
    sparse = np.zeros((rows, len(SPARSE)), dtype=np.int64)
    sparse[:, USER], sparse[:, ITEM] = u + 1, i + 1
    labels = np.stack([click, click * 0.0, click * 0.0], axis=1).astype(np.float32)
    return RankingData(sparse=sparse, dense=np.zeros((rows, len(RankerConfig().dense)), np.float32),
                       labels=labels, times=np.arange(rows, dtype=np.int64),
                       purchase_delay_ms=np.zeros(rows, np.int64), request=np.arange(rows, dtype=np.int64),
                       position=np.zeros(rows, np.int64), p_click_true=p.astype(np.float32),
                       item_id=np.array([f"i{j}" for j in i]))


def test_dot_learns_a_pure_user_item_interaction():
    data = _interaction_data(60, 60, 24_000, seed=0)
    train, valid = data.take(np.arange(20_000)), data.take(np.arange(20_000, 24_000))
    cfg = RankerTrainConfig(epochs=4, seed=0, log_every_s=1e9)
    got = {}
    for dim in (0, 8):
        model = make_model("mmoe", train, seed=0, hidden=(16, 8), user_item_dim=dim)
        fit(model, train, valid, cfg, torch.device("cpu"), log=lambda _m: None)
        with torch.inference_mode():
            p = model(torch.from_numpy(valid.sparse), torch.from_numpy(valid.dense))[:, 0].exp().numpy()
        got[dim] = auc(valid.labels[:, 0], p)
    assert got[8] > got[0] + 0.03, got
