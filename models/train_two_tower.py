"""Train and evaluate the two-tower model on an SR-GNN-format session dataset.

Protocol: training examples are every (prefix, next item) of the training sessions; the
validation slice for early stopping is the END of the training sessions (time order, never
random); the test is every given prefix, ranked against ALL items; P@20 = hit rate @20 and
MRR@20 (0 outside the top 20), as in SR-GNN (Wu et al., AAAI 2019). Reported in percent.

Also runnable without the ``recsys`` CLI (e.g. on a GPU box holding only torch + numpy)::

    recsys train --model two_tower --dataset DIR --report out.json --device cuda
    python -m recsys.bench.tower_train --dataset DIR --bench-steps 200 --bench-devices cpu,cuda
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from core.terminal import progress
from models import offline_metrics as metrics
from models.device import describe, resolve_device, synchronize
from models.registry import TWO_TOWER, TWO_TOWER_VOCAB, ModelRegistry
from models.session_data import (
    Examples,
    SessionDataset,
    item_counts,
    load_dataset,
    make_examples,
    pad_prefixes,
    time_split,
)
from models.two_tower import ItemFeatures, LogQSampler, TwoTower, TwoTowerConfig

Log = Callable[[str], None]
K = 20


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class TowerTrainConfig:
    epochs: int = 6
    batch_size: int = 512
    lr: float = 1e-3
    lr_decay: float = 0.75  # multiply the learning rate by this after every epoch
    weight_decay: float = 0.0
    dim: int = 128
    max_len: int = 20
    dropout: float = 0.2
    temperature: float = 0.07
    n_uniform: int = 2048  # uniform negatives per batch, added to the in-batch ones
    loss: str = "sampled"  # "sampled" (in-batch + uniform, logQ) | "full" (softmax over all)
    val_fraction: float = 0.05  # last share of training sessions held out for early stopping
    patience: int = 2  # epochs without validation gain before stopping
    seed: int = 0
    log_every_s: float = 15.0
    eval_batch: int = 1024


@dataclasses.dataclass
class TrainResult:
    model: TwoTower
    best_epoch: int
    epochs_run: int
    train_s: float
    examples_per_s: float
    n_train_examples: int
    history: list[dict[str, float]]
    label_counts: npt.NDArray[np.float64]


def model_config(cfg: TowerTrainConfig, n_items: int) -> TwoTowerConfig:
    return TwoTowerConfig(
        n_items=n_items, dim=cfg.dim, max_len=cfg.max_len, dropout=cfg.dropout,
        temperature=cfg.temperature,
    )


def _loss(model: TwoTower, x: torch.Tensor, y: torch.Tensor, sampler: LogQSampler, kind: str,
          features: ItemFeatures | None = None) -> torch.Tensor:
    if kind == "full":
        u = model.user_vectors(x)  # [B, D]
        ids = torch.arange(model.config.n_items, device=x.device)
        v = model.item_vectors(ids, features)  # [N, D]
        logits = u @ v.T / model.config.temperature
        logits[:, 0] = float("-inf")
        return torch.nn.functional.cross_entropy(logits, y)
    return model.sampled_softmax_loss(x, y, sampler, item_features=features)


@torch.no_grad()
def rank_labels(
    model: TwoTower, prefix: npt.NDArray[np.int64], labels: npt.NDArray[np.int64],
    device: torch.device, batch: int = 1024, features: ItemFeatures | None = None,
) -> npt.NDArray[np.int64]:
    """1-based rank of each label among ALL items (1 + #items scored strictly higher)."""
    model.eval()
    items = model.all_item_vectors(features)
    out = []
    for s in range(0, len(labels), batch):
        p = torch.from_numpy(prefix[s : s + batch]).to(device)
        y = torch.from_numpy(labels[s : s + batch]).to(device)
        scores = model.score_all(p, items)  # [b, n_items]
        target = scores.gather(1, y.unsqueeze(1))
        out.append(((scores > target).sum(1) + 1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)


def popularity_ranks(counts: npt.NDArray[np.float64], labels: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """POP baseline: rank by training-label frequency."""
    sorted_counts = np.sort(counts)
    higher = len(counts) - np.searchsorted(sorted_counts, counts[labels], side="right")
    return (higher + 1).astype(np.int64)


def summarize(ranks: npt.NDArray[np.int64]) -> dict[str, float]:
    return {
        "hit_rate_at_20": metrics.hit_rate_from_ranks(ranks, K),
        "mrr_at_20": metrics.mrr_from_ranks(ranks, K),
        "ndcg_at_20": metrics.ndcg_from_ranks(ranks, K),
    }


def train(ds: SessionDataset, cfg: TowerTrainConfig, device: torch.device, log: Log = _stderr,
          model_cfg: TwoTowerConfig | None = None, features: ItemFeatures | None = None) -> TrainResult:
    """Train on ``ds.train_sessions``; ``model_cfg`` overrides the id-only ``model_config`` (a
    content model: pass its ``features``, one row per id-embedding row, row 0 "unknown")."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    tr_sessions, val_sessions = time_split(ds.train_sessions, cfg.val_fraction)
    train_ex = make_examples(tr_sessions, cfg.max_len)
    val_ex = make_examples(val_sessions, cfg.max_len) if val_sessions else Examples(
        np.zeros((0, cfg.max_len), np.int64), np.zeros(0, np.int64))
    if len(train_ex) == 0:
        raise ValueError("no training examples: sessions need at least two items")
    counts = item_counts(train_ex.label, ds.n_items)
    model = TwoTower(model_cfg or model_config(cfg, ds.n_items)).to(device)
    feats = features.to(device) if features is not None else None
    sampler = LogQSampler(counts, cfg.n_uniform, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)
    x_all = torch.from_numpy(train_ex.prefix).to(device)
    y_all = torch.from_numpy(train_ex.label).to(device)
    n = len(train_ex)
    log(f"train: {n} examples ({len(tr_sessions)} sessions), validation: {len(val_ex)} examples "
        f"(last {len(val_sessions)} sessions), {ds.n_items - 1} items, device {describe(device)}")

    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    step_time, seen, stale, epochs_run = 0.0, 0, 0, 0
    t_start = time.perf_counter()
    n_steps = (n + cfg.batch_size - 1) // cfg.batch_size
    # a bar on a terminal only; the log lines stay as they are
    with progress("train two-tower", total=cfg.epochs * n_steps) as bar:
        for epoch in range(1, cfg.epochs + 1):
            epochs_run = epoch
            model.train()
            perm = torch.from_numpy(rng.permutation(n)).to(device)
            loss_sum = torch.zeros((), device=device)
            t_epoch = t_log = time.perf_counter()
            for step in range(n_steps):
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss = _loss(model, x_all[idx], y_all[idx], sampler, cfg.loss, feats)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                seen += len(idx)
                bar.advance()
                now = time.perf_counter()
                if now - t_log >= cfg.log_every_s:
                    done = (step + 1) * cfg.batch_size
                    log(f"epoch {epoch} step {step + 1}/{n_steps} loss {loss_sum.item() / (step + 1):.4f} "
                        f"{done / (now - t_epoch):,.0f} examples/s")
                    t_log = now
            synchronize(device)
            step_time += time.perf_counter() - t_epoch
            sched.step()
            row = {"epoch": float(epoch), "loss": loss_sum.item() / n_steps,
                   "epoch_s": time.perf_counter() - t_epoch}
            if len(val_ex):
                vr = summarize(rank_labels(model, val_ex.prefix, val_ex.label, device, cfg.eval_batch,
                                           feats))
                row.update({f"val_{k}": v for k, v in vr.items()})
                score = vr["hit_rate_at_20"] + vr["mrr_at_20"]
            else:
                score = float(epoch)  # no validation slice: keep the last epoch
            history.append(row)
            bar.update(info=f"epoch {epoch}/{cfg.epochs} loss {row['loss']:.4f}" + (
                f" val P@20 {100 * row['val_hit_rate_at_20']:.2f}" if len(val_ex) else ""))
            log(f"epoch {epoch} done: loss {row['loss']:.4f}"
                + (f" val P@20 {100 * row['val_hit_rate_at_20']:.2f} MRR@20 "
                   f"{100 * row['val_mrr_at_20']:.2f}" if len(val_ex) else "")
                + f" ({row['epoch_s']:.1f}s)")
            if score > best_score:
                best_score, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    log(f"early stop: no validation gain for {stale} epochs; best epoch {best_epoch}")
                    break
    train_s = time.perf_counter() - t_start
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, epochs_run, train_s, seen / max(step_time, 1e-9), n,
                       history, counts)


def throughput(ds: SessionDataset, cfg: TowerTrainConfig, device: torch.device, steps: int) -> float:
    """Training examples/s over ``steps`` timed steps (after 10 warm-up steps)."""
    torch.manual_seed(cfg.seed)
    ex = make_examples(ds.train_sessions, cfg.max_len)
    model = TwoTower(model_config(cfg, ds.n_items)).to(device)
    sampler = LogQSampler(item_counts(ex.label, ds.n_items), cfg.n_uniform, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x_all = torch.from_numpy(ex.prefix).to(device)
    y_all = torch.from_numpy(ex.label).to(device)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed)
    t0 = 0.0
    for step in range(steps + 10):
        if step == 10:
            synchronize(device)
            t0 = time.perf_counter()
        idx = torch.randint(0, len(ex), (cfg.batch_size,), generator=gen).to(device)
        loss = _loss(model, x_all[idx], y_all[idx], sampler, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    synchronize(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def write_vocab(path: Path, sessions: Sequence[npt.NDArray[np.int64]]) -> int:
    """``item_ids.json`` for the serving side ({item_id: id-embedding row}): every item of the
    training sessions, under the id `recsys replay` gives it (the dataset's id as a string);
    the scorer's session tower maps a session's items with it (``online.tower``). Returns its
    size."""
    seen = np.unique(np.concatenate([s for s in sessions if s.size] or [np.zeros(0, np.int64)]))
    vocab = {str(i): i for i in seen.tolist() if i > 0}
    write_json(path, vocab)
    return len(vocab)


def run(
    dataset: str | Path, report: str | Path | None, cfg: TowerTrainConfig, device_name: str = "cpu",
    threads: int | None = 2, registry_root: str | Path | None = None, promote: bool = False,
    log: Log = _stderr,
) -> dict[str, Any]:
    """Load, train, evaluate on the test prefixes, register (and maybe promote), write the report."""
    device = resolve_device(device_name, threads)
    t0 = time.perf_counter()
    ds = load_dataset(dataset)
    load_s = time.perf_counter() - t0
    res = train(ds, cfg, device, log)
    t1 = time.perf_counter()
    test_prefix = pad_prefixes(ds.test_prefixes, cfg.max_len)
    test = summarize(rank_labels(res.model, test_prefix, ds.test_labels, device, cfg.eval_batch))
    pop = summarize(popularity_ranks(res.label_counts, ds.test_labels))
    out: dict[str, Any] = {
        "model": "two_tower",
        "p_at_20": round(100 * test["hit_rate_at_20"], 2),
        "mrr_at_20": round(100 * test["mrr_at_20"], 2),
        "train_s": round(res.train_s, 1),
        "device": describe(device),
        "ndcg_at_20": round(100 * test["ndcg_at_20"], 2),
        "epochs": res.epochs_run,
        "best_epoch": res.best_epoch,
        "examples_per_s": round(res.examples_per_s, 1),
        "train_examples": res.n_train_examples,
        "test_cases": len(ds.test_labels),
        "dataset": str(dataset),
        **{k: v for k, v in ds.summary().items() if k != "dataset"},
        "pop_p_at_20": round(100 * pop["hit_rate_at_20"], 2),
        "pop_mrr_at_20": round(100 * pop["mrr_at_20"], 2),
        "load_s": round(load_s, 1),
        "eval_s": round(time.perf_counter() - t1, 1),
        "torch": torch.__version__,
        "train_config": dataclasses.asdict(cfg),
        "history": res.history,
    }
    log(f"test: P@20 {out['p_at_20']:.2f} MRR@20 {out['mrr_at_20']:.2f} "
        f"(POP {out['pop_p_at_20']:.2f}/{out['pop_mrr_at_20']:.2f}) train {out['train_s']}s")
    if registry_root is not None:
        reg = ModelRegistry(registry_root)
        headline = {k: out[k] for k in ("model", "p_at_20", "mrr_at_20", "ndcg_at_20",
                                        "train_s", "device", "dataset")}
        with tempfile.TemporaryDirectory() as staging:
            res.model.save(Path(staging) / "model.pt", extra={"dataset": str(dataset)})
            write_vocab(Path(staging) / TWO_TOWER_VOCAB, ds.train_sessions)
            version = reg.register(TWO_TOWER, staging, headline, res.model.config.to_dict())
        out["registry"] = {"root": str(registry_root), "name": TWO_TOWER, "version": version,
                           "promoted": promote}
        if promote:
            reg.promote(TWO_TOWER, version)
        log(f"registered two_tower {version} under {registry_root}" + (" (promoted)" if promote else ""))
    if report is not None:
        rp = Path(report)
        write_json(rp, out)
    return out


# --- argument parsing shared with `recsys train` --------------------------------------------


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = TowerTrainConfig()
    p.add_argument("--dataset", help="SR-GNN-format dataset folder (train_sessions.txt.gz, ...)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (default cpu)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"max epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dim", type=int, default=d.dim, help=f"embedding size (default {d.dim})")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--lr-decay", type=float, default=d.lr_decay, help="per-epoch lr factor")
    p.add_argument("--max-len", type=int, default=d.max_len, help="recent items the tower reads")
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--negatives", type=int, default=d.n_uniform,
                   help="uniform negatives per batch on top of in-batch ones")
    p.add_argument("--loss", choices=("sampled", "full"), default=d.loss)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="last share of training sessions used for early stopping")
    p.add_argument("--patience", type=int, default=d.patience)
    p.add_argument("--seed", type=int, default=d.seed)


def config_from_args(args: argparse.Namespace) -> TowerTrainConfig:
    return TowerTrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_decay=args.lr_decay,
        dim=args.dim, max_len=args.max_len, dropout=args.dropout, temperature=args.temperature,
        n_uniform=args.negatives, loss=args.loss, val_fraction=args.val_fraction,
        patience=args.patience, seed=args.seed,
    )
