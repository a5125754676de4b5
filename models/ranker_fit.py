"""The ranker's training core: configuration, a fresh model, the training tensors and the fit
loop (AdamW, early stopping on the validation log loss of its heads, position debiasing),
and the refit on train + validation (``refit_on``). The pipeline around it (calibration,
evaluation, export, registry) is ``models.train_ranker``.

Position debiasing (``position_debias``, default on; ``models.position_bias``, PAL): every
head's observed log-probability in training is ``model(sparse, dense) + log examine(pos)``, a
learned examination curve with examine(0) = 1, so the model learns "the probability if shown at
the top" and is served without a position.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

from core.terminal import progress
from models import delayed_feedback as DF
from models import offline_metrics as metrics
from models.deepfm import DEFAULT_BUCKETS, TASKS, DeepFM, RankerConfig
from models.distributed import Dist
from models.mmoe import MMoE
from models.position_bias import PositionAware, PositionBias, click_rate_ratio, shown_predictions
from models.ranker_eval import predict_raw
from models.ranking_dataset import RankingData

Log = Callable[[str], None]
MODELS = {"deepfm": ("purchase",), "deepfm_click": ("click",), "mmoe": TASKS}


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class RankerTrainConfig:
    epochs: int = 6
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW (decoupled)
    patience: int = 2
    seed: int = 0
    labels: str = "final"
    calibration: str = "auto"
    window_ms: int = 7 * 86_400_000  # purchase attribution window (delay-CDF fit)
    max_steps: int = 0  # stop after this many optimiser steps (0 = no limit)
    neg_ratio: float = 1.0  # keep this share of all-negative rows, weighted 1/ratio
    log_every_s: float = 15.0
    position_debias: bool = True  # train with the shown position (models.position_bias)
    max_positions: int = 20  # positions >= this share the last examination probability
    position_lr: float = 0.05  # AdamW step of the examination curve (a few scalars, no decay)
    refit: bool = False  # then refit on train + valid for the early-stopped epoch count (refit_on)


def make_model(name: str, train: RankingData, dropout: float = 0.1, seed: int = 0,
               embed_dim: int = 8, hidden: tuple[int, ...] = (128, 64), n_experts: int = 4,
               position_debias: bool = False, sparse: tuple[str, ...] | None = None) -> DeepFM | MMoE:
    """A fresh model for ``name`` with dense standardisation from the training split, each head
    starting at its base rate (``position_debias``: the rate at the top position, which is
    what a debiased head predicts). ``sparse``: the sparse fields it reads (default every ``SPARSE`` field; an
    ablation passes fewer, with the rows' columns to match: ``recsys.bench.user_embedding``)."""
    if name not in MODELS:
        raise ValueError(f"unknown ranker {name!r}; choose from {sorted(MODELS)}")
    torch.manual_seed(seed)
    mean, std = train.dense.astype(np.float64).mean(0), train.dense.astype(np.float64).std(0)
    fields = sparse or RankerConfig.sparse
    cfg = RankerConfig(kind="mmoe" if name == "mmoe" else "deepfm", tasks=MODELS[name], sparse=fields,
                       buckets=tuple(DEFAULT_BUCKETS[f] for f in fields), embed_dim=embed_dim,
                       hidden=hidden, dropout=dropout, n_experts=n_experts,
                       dense_mean=tuple(float(x) for x in mean), dense_std=tuple(float(x) for x in std))
    model = MMoE(cfg) if cfg.kind == "mmoe" else DeepFM(cfg)
    # start each head at its base rate (post-click rates for the ESMM heads)
    top = train.position == 0
    rows = top if position_debias and top.any() else slice(None)
    rate = train.labels[rows].astype(np.float64).mean(0).clip(1e-4, 1 - 1e-4)
    if cfg.kind == "mmoe" and cfg.esmm:
        rate[1:] = (rate[1:] / rate[0]).clip(1e-4, 1 - 1e-4)
    with torch.no_grad():
        model.encoder.first_dense.bias.copy_(torch.tensor(
            [math.log(rate[TASKS.index(t)] / (1 - rate[TASKS.index(t)])) for t in cfg.tasks]))
    return model


@dataclasses.dataclass
class Prepared:
    sparse: Tensor  # [n, S]
    dense: Tensor  # [n, N]
    y: Tensor  # [n, 3] labels used for training (TASKS order)
    w: Tensor  # [n, 3] per-task weights (0 = this row does not train this head)
    cdf: Tensor  # [n] observable fraction F(elapsed) of a purchase (dfm), else 1
    position: Tensor  # [n] shown position (0 = top)


def sample_negatives(y: npt.NDArray[Any], w: npt.NDArray[Any], ratio: float, seed: int
                     ) -> tuple[npt.NDArray[np.int64], npt.NDArray[Any]]:
    """Negative down-sampling with importance weights: rows with no positive label are kept
    with probability ``ratio`` and weighted ``1/ratio``, so weighted losses and rates stay
    unbiased. Returns (kept row indices, their weights)."""
    if not 0 < ratio <= 1:
        raise ValueError(f"neg_ratio must be in (0, 1], got {ratio}")
    if ratio == 1:
        return np.arange(len(y)), w
    neg = ~(y > 0).any(axis=1)
    keep = ~neg | (np.random.default_rng(seed).random(len(y)) < ratio)
    w = w.astype(np.float32, copy=True)
    w[neg] /= ratio
    return np.flatnonzero(keep), w[keep]


def prepare(data: RankingData, tcfg: RankerTrainConfig, device: torch.device
            ) -> tuple[Prepared, dict[str, Any]]:
    """Training tensors under the purchase-label mode (``delayed_feedback.training_labels``),
    negatives down-sampled to ``tcfg.neg_ratio`` with importance weights."""
    idx, y, w, cdf, info = DF.training_labels(data.labels, data.times, data.purchase_delay_ms, tcfg.labels,
                                              tcfg.window_ms)
    kept, w = sample_negatives(y, w, tcfg.neg_ratio, tcfg.seed)
    idx, y, cdf = idx[kept], y[kept], cdf[kept]
    info = {**info, "neg_ratio": tcfg.neg_ratio, "rows_after_sampling": len(kept)}

    def t(a: npt.NDArray[Any]) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return Prepared(t(data.sparse[idx]), t(data.dense[idx]), t(y), t(w), t(cdf), t(data.position[idx])), info


def batch_loss(logp: Tensor, b: Prepared, sel: Tensor, tasks: tuple[str, ...], mode: str) -> Tensor:
    """Σ over heads of the weighted mean per-example loss on rows ``sel``."""
    total = logp.new_zeros(())
    for j, task in enumerate(tasks):
        c = TASKS.index(task)
        lp, y, w = logp[:, j], b.y[sel, c], b.w[sel, c]
        if task == "purchase" and mode == "dfm":
            per = DF.delayed_nll(lp, y, b.cdf[sel])
        elif task == "purchase" and mode == "fnw":
            per = DF.fnw_nll(lp, y)
        else:
            per = DF.bce(lp, y)
        total = total + (w * per).sum() / w.sum().clamp_min(1.0)
    return total


@dataclasses.dataclass
class FitResult:
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    step_losses: list[float]
    train_s: float
    info: dict[str, Any]
    position_bias: PositionBias | None = None  # the learned examination curve (debiased)


def fit(model: DeepFM | MMoE, train: RankingData, valid: RankingData | None, tcfg: RankerTrainConfig,
        device: torch.device, d: Dist | None = None, record_steps: bool = False, log: Log = _stderr
        ) -> FitResult:
    """Adam on the training split, early stopping on the validation log loss (final labels).
    ``tcfg.position_debias``: trained as ``PositionAware`` (the model's config says so); the
    validation loss is taken at the shown positions."""
    d = d or Dist()
    model.config = dataclasses.replace(model.config, position_debias=tcfg.position_debias)
    tasks = model.config.tasks
    bias = PositionBias(tcfg.max_positions) if tcfg.position_debias else None
    if bias is not None:  # start at the observed click-rate ratios (exact for a random order)
        bias.start_at(click_rate_ratio(train.position, train.labels[:, 0], tcfg.max_positions))
    trained: nn.Module = model if bias is None else PositionAware(model, bias)
    trained.to(device)
    data, info = prepare(train, tcfg, device)
    net = d.wrap(trained, device)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters())}]
    if bias is not None:
        groups.append({"params": list(bias.parameters()), "lr": tcfg.position_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    n, bsz = data.y.shape[0], tcfg.batch_size
    n_steps = n // bsz if d.enabled else math.ceil(n / bsz)
    best, best_epoch, stale, steps = math.inf, 0, 0, 0
    best_state = copy.deepcopy(trained.state_dict())
    history: list[dict[str, float]] = []
    step_losses: list[float] = []
    t0 = t_log = time.perf_counter()
    epoch = 0
    total = min(tcfg.epochs * n_steps, tcfg.max_steps or tcfg.epochs * n_steps)
    # a bar on a terminal only (main rank); the log lines stay as they are
    with progress(f"train {type(model).__name__}", total=total,
                  enabled=None if d.is_main else False) as bar:
        for epoch in range(1, tcfg.epochs + 1):
            net.train()
            perm = np.random.default_rng(tcfg.seed * 1009 + epoch).permutation(n)
            loss_sum = torch.zeros((), device=device)
            done = 0
            for s in range(n_steps):
                sel = torch.from_numpy(d.shard(perm[s * bsz : (s + 1) * bsz])).to(device)
                inputs = (data.sparse[sel], data.dense[sel]) + (() if bias is None else (data.position[sel],))
                loss = batch_loss(net(*inputs), data, sel, tasks, tcfg.labels)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                done, steps = done + 1, steps + 1
                bar.advance()
                if record_steps:
                    step_losses.append(d.mean(float(loss.item())))
                if time.perf_counter() - t_log > tcfg.log_every_s and d.is_main:
                    log(f"  epoch {epoch} step {s + 1}/{n_steps} loss {loss_sum.item() / done:.5f}")
                    t_log = time.perf_counter()
                if tcfg.max_steps and steps >= tcfg.max_steps:
                    break
            row = {"epoch": float(epoch), "train_loss": d.mean(loss_sum.item() / max(done, 1))}
            score = -float(epoch)
            if valid is not None and len(valid):
                p = predict_raw(model, valid, device) if bias is None else shown_predictions(
                    model, bias, valid, device)
                lls = {t: metrics.log_loss(valid.labels[:, TASKS.index(t)], p[:, j])
                       for j, t in enumerate(tasks)}
                row.update({f"valid_logloss_{t}": v for t, v in lls.items()})
                row["valid_loss"] = score = float(sum(lls.values()))
            history.append(row)
            bar.update(info=f"epoch {epoch}/{tcfg.epochs} " + " ".join(
                f"{k} {v:.4f}" for k, v in row.items() if k in ("train_loss", "valid_loss")))
            if d.is_main:
                log(f"  epoch {epoch}: " + " ".join(f"{k} {v:.5f}" for k, v in row.items() if k != "epoch"))
            if score < best:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(trained.state_dict())
            else:
                stale += 1
                if stale >= tcfg.patience:
                    break
            if tcfg.max_steps and steps >= tcfg.max_steps:
                break
    trained.load_state_dict(best_state)
    trained.eval()
    return FitResult(best_epoch, epoch, history, step_losses, time.perf_counter() - t0, info, bias)


def refit_on(build: Callable[[RankingData], DeepFM | MMoE], train: RankingData, valid: RankingData,
             first: FitResult, tcfg: RankerTrainConfig, device: torch.device, d: Dist | None = None,
             log: Log = _stderr) -> tuple[DeepFM | MMoE, FitResult]:
    """A fresh model (``build``: ``make_model`` with the first one's options) trained on
    ``train`` + ``valid`` for the epoch count early stopping chose on ``valid`` (``first``), no
    early stopping: the newest rows before the test slice reach the weights too
    (``recsys.bench.refit_split`` measured it: +0.014 NDCG@10 at 3 sim hours, +0.004 at 10.8)."""
    both = RankingData.concat(train, valid)
    model = build(both)
    log(f"refit on {len(both)} rows (train + valid) for {first.best_epoch} epochs")
    res = fit(model, both, None, dataclasses.replace(tcfg, epochs=max(first.best_epoch, 1)), device, d,
              log=log)
    return model, res
