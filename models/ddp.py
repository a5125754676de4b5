"""Distributed data parallel for ranker training: torchrun, gloo on CPU, NCCL on GPUs.

    torchrun --nproc_per_node 2 -m models.train_ranker --model mmoe ...        # or
    python -m torch.distributed.run --nproc_per_node 2 -m models.train_ranker ...

Every rank builds (or loads) the same data and the same seeded permutation; each global batch
of ``B`` rows is cut into ``world`` equal contiguous slices and rank ``r`` takes slice ``r``.
DDP averages the gradients, so with equal slices a step equals the single-process step on the
whole batch (the last, partial batch of an epoch is dropped when ``world > 1`` to keep the
slices equal). All ranks evaluate the whole validation split, so early stopping agrees without
communication; rank 0 writes reports and checkpoints.

``python -m models.ddp --data D.npz --steps N --out losses.json`` trains a ranker for N steps
on saved ``RankingData`` and writes the per-step global mean loss (``tests/test_ddp.py``
compares 2 processes with 1).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch_idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """This rank's equal contiguous slice of a global batch."""
        if not self.enabled:
            return batch_idx
        m = batch_idx.size // self.world
        return batch_idx[self.rank * m : (self.rank + 1) * m]

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def mean(self, value: float, device: torch.device | None = None) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device_name: str = "cpu") -> Dist:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local)


def device_for(d: Dist, device_name: str) -> str:
    """Each rank its own GPU: ``cuda`` -> ``cuda:LOCAL_RANK`` under torchrun."""
    if d.enabled and device_name in ("cuda", "auto") and torch.cuda.is_available():
        return f"cuda:{d.local_rank}"
    return device_name


def run_steps(data_path: str | Path, steps: int, batch_size: int, seed: int, model: str,
              d: Dist) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps (no dropout) and return per-step global losses."""
    from models.ranking_data import RankingData
    from models.train_ranker import TrainConfig, batch_loss, fit, make_model, prepare

    torch.manual_seed(seed)
    data = RankingData.load(data_path)
    tcfg = TrainConfig(epochs=10_000, batch_size=batch_size, seed=seed, max_steps=steps, patience=10_000)
    net = make_model(model, data, dropout=0.0, seed=seed)
    full, _ = prepare(data, tcfg, torch.device("cpu"))
    every = torch.arange(len(data))

    def full_loss() -> float:
        with torch.no_grad():
            return float(batch_loss(net(full.sparse, full.dense), full, every, net.config.tasks, "final"))

    before = full_loss()
    res = fit(net, data, None, tcfg, torch.device("cpu"), d, record_steps=True, log=lambda _m: None)
    flat = torch.cat([p.detach().flatten() for p in net.parameters()])
    return {"world": d.world, "losses": res.step_losses, "full_loss_before": before,
            "full_loss_after": full_loss(),
            "param_sum": float(flat.double().sum()), "param_abs": float(flat.double().abs().sum())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.ddp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="RankingData .npz")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", choices=("deepfm", "mmoe"), default="mmoe")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    d = init_from_env("cpu")
    try:
        out = run_steps(args.data, args.steps, args.batch_size, args.seed, args.model, d)
        if d.is_main:
            Path(args.out).write_text(json.dumps(out) + "\n")
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
