"""Distributed data parallel for ranker training: torchrun, gloo on CPU, NCCL on GPUs.

    torchrun --nproc_per_node 2 -m recsys.cli.main train --model mmoe ...        # or
    python -m torch.distributed.run --nproc_per_node 2 -m recsys.cli.main train --model mmoe ...

Every rank builds (or loads) the same data and the same seeded permutation; each global batch
of ``B`` rows is cut into ``world`` equal contiguous slices and rank ``r`` takes slice ``r``.
DDP averages the gradients, so with equal slices a step equals the single-process step on the
whole batch (the last, partial batch of an epoch is dropped when ``world > 1`` to keep the
slices equal). All ranks evaluate the whole validation split, so early stopping agrees without
communication; rank 0 writes reports and checkpoints.

``python -m recsys.bench.ddp_steps --data D.npz --steps N --out losses.json`` trains a ranker for
N steps on saved ``RankingData`` and writes the per-step global mean loss (``tests/test_ddp.py``
compares 2 processes with 1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
