"""Two-tower model, session data and the `recsys train` CLI on small synthetic data."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.registry import ModelRegistry
from models.session_data import (
    DatasetError,
    SessionDataset,
    load_dataset,
    make_examples,
    pad_prefixes,
    time_split,
)
from models.train_two_tower import (
    TowerTrainConfig,
    popularity_ranks,
    rank_labels,
    summarize,
    train,
)
from models.two_tower import (
    ItemFeatures,
    LogQSampler,
    TwoTower,
    TwoTowerConfig,
    hash_title_tokens,
)
from recsys.cli.main import main as recsys_main

N_ITEMS = 300  # ids 1..300 in 30 clusters of 10


def synthetic_sessions(n: int, seed: int) -> list[np.ndarray]:
    """Shoppers walk a ring inside a 10-item cluster (p=0.85) or jump to a popular item."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    pop /= pop.sum()
    out = []
    for _ in range(n):
        cur = int(rng.choice(N_ITEMS, p=pop)) + 1
        s = [cur]
        for _ in range(int(rng.integers(2, 9))):
            if rng.random() < 0.85:
                base = (cur - 1) // 10 * 10
                cur = base + (cur - base) % 10 + 1
            else:
                cur = int(rng.choice(N_ITEMS, p=pop)) + 1
            s.append(cur)
        out.append(np.asarray(s, dtype=np.int64))
    return out


def write_dataset(root: Path, n_train: int = 600, n_test: int = 120, seed: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sessions = synthetic_sessions(n_train + n_test, seed)
    with gzip.open(root / "train_sessions.txt.gz", "wt") as fh:
        for s in sessions[:n_train]:
            fh.write(" ".join(map(str, s)) + "\n")
    with gzip.open(root / "test_prefix_label.tsv.gz", "wt") as fh:
        fh.write("prefix\tlabel\n")
        for s in sessions[n_train:]:
            for i in range(len(s) - 1, 0, -1):
                fh.write(f"{' '.join(map(str, s[:i]))}\t{s[i]}\n")
    return root


# --- session data ---------------------------------------------------------------------------


def test_examples_are_every_prefix_right_aligned() -> None:
    ex = make_examples([np.array([4, 5, 6]), np.array([7])], max_len=2)
    assert ex.label.tolist() == [5, 6]  # a 1-item session yields nothing
    assert ex.prefix.tolist() == [[0, 4], [4, 5]]
    assert pad_prefixes([np.array([1, 2, 3])], 2).tolist() == [[2, 3]]  # keeps the most recent


def test_time_split_takes_the_end() -> None:
    sessions = [np.array([i, i + 1]) for i in range(1, 11)]
    train_s, val_s = time_split(sessions, 0.2)
    assert [int(s[0]) for s in val_s] == [9, 10]
    assert len(train_s) == 8


def test_missing_or_bad_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="lacks train_sessions"):
        load_dataset(tmp_path)
    root = write_dataset(tmp_path / "d", n_train=5, n_test=2)
    with gzip.open(root / "test_prefix_label.tsv.gz", "wt") as fh:
        fh.write("a\tb\n1\t2\n")
    with pytest.raises(DatasetError, match="header"):
        load_dataset(root)


# --- model ----------------------------------------------------------------------------------


def test_two_tower_learns_well_above_popularity(tmp_path: Path) -> None:
    torch.set_num_threads(2)
    ds = load_dataset(write_dataset(tmp_path / "syn", n_train=1500, n_test=300, seed=1))
    cfg = TowerTrainConfig(epochs=6, batch_size=128, dim=32, max_len=8, n_uniform=256, lr=3e-3,
                      lr_decay=0.9, val_fraction=0.1, patience=3, seed=0, log_every_s=1e9)
    res = train(ds, cfg, torch.device("cpu"), log=lambda _m: None)
    test_prefix = pad_prefixes(ds.test_prefixes, cfg.max_len)
    model_hr = summarize(rank_labels(res.model, test_prefix, ds.test_labels, torch.device("cpu")))
    pop_hr = summarize(popularity_ranks(res.label_counts, ds.test_labels))
    # the walk is 85% predictable from the last item; popularity only knows the global head
    assert model_hr["hit_rate_at_20"] > 0.8
    assert model_hr["hit_rate_at_20"] > pop_hr["hit_rate_at_20"] + 0.3
    assert model_hr["mrr_at_20"] > 2 * pop_hr["mrr_at_20"]
    assert res.best_epoch >= 1 and len(res.history) == res.epochs_run


def _full_config() -> TwoTowerConfig:
    return TwoTowerConfig(
        n_items=50, dim=16, max_len=4, n_categories=5, n_brands=3, n_price_buckets=4,
        title_buckets=64, user_features=(("surface", 3), ("hour", 24)), id_dropout=0.3,
    )


def test_shapes_and_unit_norm() -> None:
    torch.manual_seed(0)
    model = TwoTower(_full_config()).eval()
    prefix = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4], [0, 0, 0, 9]])
    u = model.user_vectors(prefix, {"surface": torch.tensor([1, 2, 0])})
    assert u.shape == (3, 16)
    assert torch.allclose(u.norm(dim=-1), torch.ones(3), atol=1e-5)
    longer = torch.tensor([[7, 7, 1, 2, 3, 4]])  # longer than max_len: only the last 4 count
    assert torch.allclose(model.user_vectors(longer), model.user_vectors(prefix[1:2]), atol=1e-6)
    scores = model.score_all(prefix)
    assert scores.shape == (3, 50) and torch.isinf(scores[:, 0]).all()


def test_cold_item_is_embedded_from_content_alone() -> None:
    torch.manual_seed(0)
    model = TwoTower(_full_config()).eval()
    feats = ItemFeatures(
        category=torch.tensor([1, 2]), brand=torch.tensor([1, 1]),
        price_bucket=torch.tensor([2, 3]),
        title_tokens=hash_title_tokens(["red running shoe", "blue denim jacket"], 64, 6),
    )
    cold = model.item_vectors(torch.tensor([0, 0]), feats)  # no trained id
    assert cold.shape == (2, 16)
    assert torch.allclose(cold.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(cold[0], cold[1])
    warm = model.item_vectors(torch.tensor([5, 5]), feats)
    assert not torch.allclose(warm, cold)


def test_checkpoint_round_trip_keeps_config_and_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TwoTower(_full_config()).eval()
    path = model.save(tmp_path / "m.pt")
    loaded = TwoTower.load(path)
    assert loaded.config == model.config
    assert isinstance(loaded.config.user_features, tuple)
    prefix = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    ctx = {"hour": torch.tensor([3, 20])}
    assert torch.equal(loaded.user_vectors(prefix, ctx), model.user_vectors(prefix, ctx))
    assert torch.equal(loaded.all_item_vectors(), model.all_item_vectors())
    assert TwoTowerConfig.from_dict(json.loads(json.dumps(model.config.to_dict()))) == model.config
    with pytest.raises(ValueError, match="not a two-tower checkpoint"):
        torch.save({"format": "other"}, tmp_path / "x.pt")
        TwoTower.load(tmp_path / "x.pt")


def test_logq_correction_and_accidental_hits() -> None:
    counts = np.array([0.0, 6.0, 3.0, 1.0])  # q = .6, .3, .1
    sampler = LogQSampler(counts, n_uniform=3)
    ids = torch.tensor([1, 2, 3])
    expected = torch.log(torch.tensor([4 * 0.6 + 1.0, 4 * 0.3 + 1.0, 4 * 0.1 + 1.0]))
    assert torch.allclose(sampler.log_expected_count(ids, batch=4), expected)
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=4, dim=8, max_len=2))
    prefix = torch.tensor([[0, 1], [0, 1], [1, 2]])
    labels = torch.tensor([2, 2, 3])  # a duplicate label: masked, not a negative for row 0
    loss = model.sampled_softmax_loss(prefix, labels, sampler)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert model.item_tower.id_emb.weight.grad is not None


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        TwoTowerConfig(n_items=1)
    with pytest.raises(ValueError, match="unknown"):
        TwoTowerConfig.from_dict({"n_items": 5, "bogus": 1})
    assert dataclasses.replace(TwoTowerConfig(n_items=5), dim=64).dim == 64


# --- CLI ------------------------------------------------------------------------------------


def test_cli_trains_reports_and_registers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_dataset(tmp_path / "tiny", n_train=200, n_test=40)
    report, reg = tmp_path / "r" / "report.json", tmp_path / "registry"
    rc = recsys_main([
        "--state-dir", str(tmp_path / "state"), "train", "--dataset", str(data), "--model",
        "two_tower", "--report", str(report), "--epochs", "1", "--dim", "16", "--batch-size", "64",
        "--negatives", "32", "--out", str(reg), "--promote",
    ])
    assert rc == 0
    out = json.loads(report.read_text())
    for key in ("model", "p_at_20", "mrr_at_20", "train_s", "device", "epochs",
                "examples_per_s", "dataset"):
        assert key in out
    assert out["model"] == "two_tower" and 0 <= out["mrr_at_20"] <= out["p_at_20"] <= 100
    current = ModelRegistry(reg).current("two_tower")
    assert current is not None and current.version == "v1"
    assert current.metrics["p_at_20"] == out["p_at_20"]
    assert TwoTower.load(current.model_file).config.dim == 16
    # the serving side's vocabulary: each training item under the id `recsys replay` gives it
    with gzip.open(data / "train_sessions.txt.gz", "rt") as fh:
        seen = {int(t) for line in fh for t in line.split()}
    vocab = json.loads((current.path / "item_ids.json").read_text())
    assert vocab == {str(i): i for i in seen}
    assert recsys_main(["--state-dir", str(tmp_path / "state"), "train", "list", "--out", str(reg)]) == 0
    assert "* two_tower v1" in capsys.readouterr().out


def test_cli_missing_dataset_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = recsys_main(["--state-dir", str(tmp_path), "train", "--dataset", str(tmp_path / "none"),
                      "--report", str(tmp_path / "r.json")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    rc = recsys_main(["--state-dir", str(tmp_path), "train"])
    assert rc == 2 and "--dataset and --report required" in capsys.readouterr().err


def test_session_dataset_summary() -> None:
    ds = SessionDataset("x", [np.array([1, 2])], [np.array([1])], np.array([2]), 3)
    assert ds.summary() == {"dataset": "x", "train_sessions": 1, "test_cases": 1, "n_items": 2}
