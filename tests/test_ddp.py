"""DDP: ranker training with 2 processes (torchrun, gloo on CPU) matches 1 process step by step."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import torch

from models.distributed import Dist
from recsys.bench.ddp_steps import run_steps
from sim import training_set as TS
from sim.config import WorldConfig
from tests.conftest import ROOT

STEPS, BATCH = 12, 256


def test_two_process_gloo_matches_single_process(tmp_path):
    torch.set_num_threads(1)
    world = WorldConfig().with_(catalog={"n_items": 200, "seed": 5}, users={"n_users": 300},
                                dynamics={"new_users_per_h": 5, "new_items_per_h": 2})
    data = TS.simulate(TS.TrainingSetConfig(days=0.8, warmup_days=0.3, sessions_per_h=20), world=world)
    path = tmp_path / "d.npz"
    data.save(path)
    single = run_steps(path, STEPS, BATCH, seed=1, model="mmoe", d=Dist())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                  "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "ddp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "recsys.bench.ddp_steps", "--data", str(path), "--steps", str(STEPS),
         "--batch-size", str(BATCH),
         "--seed", "1", "--model", "mmoe", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = json.loads(out.read_text())
    a, b = np.array(single["losses"]), np.array(ddp["losses"])
    print(f"\n{len(data)} rows; losses 1 process {a.round(5).tolist()}\n2 processes {b.round(5).tolist()}\n"
          f"max |diff| {np.abs(a - b).max():.2e}; parameter sums {single['param_sum']:.6f} vs "
          f"{ddp['param_sum']:.6f}; full-data loss {single['full_loss_before']:.5f} -> "
          f"{single['full_loss_after']:.5f} (1 process) / {ddp['full_loss_after']:.5f} (2 processes)")
    assert ddp["world"] == 2 and len(a) == len(b) == STEPS
    assert single["full_loss_after"] < single["full_loss_before"]  # it trains
    assert abs(ddp["full_loss_after"] - single["full_loss_after"]) < 1e-4 * single["full_loss_after"]
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
    assert abs(ddp["param_abs"] - single["param_abs"]) < 1e-4 * single["param_abs"]
