"""DDP check driver: ``python -m recsys.bench.ddp_steps --data D.npz --steps N --out losses.json``
(under ``torchrun`` for several processes) trains a ranker for N steps on saved ``RankingData``
and writes the per-step global mean loss; ``tests/test_ddp.py`` compares 2 processes with 1."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from models.distributed import Dist, init_from_env
from models.ranker_fit import RankerTrainConfig, batch_loss, fit, make_model, prepare
from models.ranking_dataset import RankingData


def run_steps(data_path: str | Path, steps: int, batch_size: int, seed: int, model: str,
              d: Dist) -> dict[str, Any]:
    """Train ``model`` for ``steps`` steps (no dropout) and return per-step global losses."""
    torch.manual_seed(seed)
    data = RankingData.load(data_path)
    tcfg = RankerTrainConfig(epochs=10_000, batch_size=batch_size, seed=seed, max_steps=steps,
                             patience=10_000)
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
    p = argparse.ArgumentParser(prog="python -m recsys.bench.ddp_steps", description=__doc__,
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
