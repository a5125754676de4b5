"""Metrics against hand-computed values and independent references (AUC: the Mann-Whitney rank
formula and brute-force pair counting; log loss: scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models import offline_metrics as m


def test_hit_rate_and_mrr_on_lists() -> None:
    ranked = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    labels = [2, 4, 10]  # rank 2, rank 1, absent
    assert m.hit_rate_at_k(ranked, labels, 1) == pytest.approx(1 / 3)
    assert m.hit_rate_at_k(ranked, labels, 2) == pytest.approx(2 / 3)
    assert m.mrr_at_k(ranked, labels, 3) == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m.mrr_at_k(ranked, labels, 1) == pytest.approx(1 / 3)  # only the rank-1 hit counts


def test_recall_with_several_relevant_items() -> None:
    ranked = [[1, 2, 3, 4], [5, 6, 7, 8]]
    relevant = [{2, 4, 9}, {8}]
    # query 1: 2 of 3 found in top 4; query 2: 1 of 1 found in top 4, 0 in top 3
    assert m.recall_at_k(ranked, relevant, 4) == pytest.approx((2 / 3 + 1) / 2)
    assert m.recall_at_k(ranked, relevant, 3) == pytest.approx((1 / 3 + 0) / 2)


def test_ndcg_hand_computed() -> None:
    # relevant at ranks 1 and 3: DCG = 1 + 1/log2(4) = 1.5; ideal = 1 + 1/log2(3)
    ideal = 1 + 1 / math.log2(3)
    assert m.ndcg_at_k([[1, 2, 3]], [{1, 3}], 3) == pytest.approx(1.5 / ideal)
    assert m.ndcg_at_k([[5, 1]], [1], 2) == pytest.approx(1 / math.log2(3))
    assert m.ndcg_at_k([[1, 2]], [1], 2) == pytest.approx(1.0)


def test_rank_based_variants() -> None:
    ranks = [1, 3, 25]
    assert m.hit_rate_from_ranks(ranks, 20) == pytest.approx(2 / 3)
    assert m.mrr_from_ranks(ranks, 20) == pytest.approx((1 + 1 / 3) / 3)
    assert m.ndcg_from_ranks(ranks, 20) == pytest.approx((1 + 0.5) / 3)  # 1/log2(4) = 0.5


def test_rank_and_list_variants_agree() -> None:
    rng = np.random.default_rng(0)
    ranked = [list(rng.permutation(50) + 1) for _ in range(30)]
    labels = [int(rng.integers(1, 51)) for _ in range(30)]
    ranks = [r.index(lab) + 1 for r, lab in zip(ranked, labels, strict=True)]
    for k in (1, 5, 20):
        assert m.hit_rate_at_k(ranked, labels, k) == pytest.approx(m.hit_rate_from_ranks(ranks, k))
        assert m.mrr_at_k(ranked, labels, k) == pytest.approx(m.mrr_from_ranks(ranks, k))
        assert m.ndcg_at_k(ranked, labels, k) == pytest.approx(m.ndcg_from_ranks(ranks, k))


def test_auc_hand_computed_and_ties() -> None:
    assert m.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert m.auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    # positives 0.9, 0.1; negatives 0.9, 0.2: pairs 0.5 + 1 + 0 + 0 = 1.5 of 4
    assert m.auc([1, 0, 1, 0], [0.9, 0.9, 0.1, 0.2]) == pytest.approx(0.375)
    assert m.auc([1, 1, 0], [3.0, 2.0, 1.0]) == pytest.approx(1.0)


def _mann_whitney_auc(y: np.ndarray, s: np.ndarray) -> float:
    from scipy.stats import rankdata

    r = rankdata(s)  # average ranks over ties
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_the_mann_whitney_rank_formula(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 50_000
    z = rng.normal(-2.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    s = (1 / (1 + np.exp(-(z + rng.normal(0, 1, n))))).round(3)  # ~1,000 distinct scores: ties
    got = m.auc(y, s)
    assert 0.6 < got < 0.9
    assert got == pytest.approx(_mann_whitney_auc(y, s), abs=1e-12)
    assert m.auc(y.astype(bool), s) == got and m.auc(y.astype(int).tolist(), s.tolist()) == got
    assert m.auc(y, -s) == pytest.approx(1 - got, abs=1e-12)


def test_auc_matches_pair_counting_on_small_sets() -> None:
    rng = np.random.default_rng(4)
    for _ in range(30):
        y = rng.integers(0, 2, 12).astype(float)
        if not 0 < y.sum() < y.size:
            continue
        s = rng.integers(0, 4, 12).astype(float)  # heavy ties
        pos, neg = s[y == 1], s[y == 0]
        pairs = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        assert m.auc(y, s) == pytest.approx(float(pairs.mean()), abs=1e-12)


def test_log_loss_agrees_with_sklearn_inside_the_clip() -> None:
    from sklearn.metrics import log_loss

    rng = np.random.default_rng(5)
    p = rng.uniform(1e-6, 1 - 1e-6, 10_000)
    y = (rng.random(p.size) < p).astype(float)
    assert m.log_loss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


def test_log_loss_hand_computed() -> None:
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert m.log_loss([1, 0], [0.8, 0.3]) == pytest.approx(expected)
    assert math.isfinite(m.log_loss([0], [1.0]))  # clipped, not infinite
    assert m.log_loss([0], [1.0]) == pytest.approx(-math.log(1e-15), rel=1e-3)


def test_ece_hand_computed() -> None:
    # bin [0, .5): p mean .15, y mean .5 -> .35 * 1/2; bin [.5, 1]: p .85, y .5 -> .35 * 1/2
    assert m.ece([0, 1, 1, 0], [0.1, 0.2, 0.8, 0.9], n_bins=2) == pytest.approx(0.35)
    assert m.ece([0, 1, 0, 1], [0.5] * 4, n_bins=10) == pytest.approx(0.0)
    # p = 1.0 lands in the last bin: |1 - 1| = 0 there, and |0 - 0.05| * 1/2 in the first
    assert m.ece([1, 0], [1.0, 0.05], n_bins=10) == pytest.approx(0.025)


def test_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="k must be"):
        m.hit_rate_at_k([[1]], [1], 0)
    with pytest.raises(ValueError, match="ranked lists"):
        m.mrr_at_k([[1], [2]], [1], 5)
    with pytest.raises(ValueError, match="both positive and negative"):
        m.auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="only 0 and 1"):
        m.log_loss([2], [0.5])
    with pytest.raises(ValueError, match="1-based"):
        m.mrr_from_ranks([0, 1], 20)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        m.ece([1], [1.5])
