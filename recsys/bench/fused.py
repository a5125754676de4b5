"""The ranker's serving forms, timed: the fused MMoE (float32 and bfloat16) against the frozen
float and INT8 graphs of the same (untrained) model, one thread, 500 candidates.

    python -m recsys.bench.fused [--candidates 500] [--rounds 60] [--report PATH]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from core.reports import write_json
from models.deepfm import RankerConfig
from models.fused import FusedMMoE, bf16_native
from models.mmoe import MMoE
from models.ranker_runtime import build_model, freeze, quantize


def compare(candidates: int = 500, rounds: int = 60, block: int = 10, seed: int = 0) -> dict[str, float]:
    """Median ms per batch of ``candidates`` for the serving forms of one (untrained) MMoE, one
    thread, measured in alternating blocks so drift of a shared machine hits all alike."""
    torch.set_num_threads(1)
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"))
    torch.manual_seed(seed)
    m = build_model(cfg).eval()
    assert isinstance(m, MMoE)
    sparse = torch.randint(0, 1 << 30, (candidates, len(cfg.sparse)))
    dense = torch.randn(candidates, len(cfg.dense))
    forms = {"float": freeze(m, cfg), "int8": freeze(quantize(m), cfg),
             "fused": freeze(FusedMMoE(m).eval(), cfg),
             "fused_bf16": freeze(FusedMMoE(m, torch.bfloat16).eval(), cfg)}
    times: dict[str, list[float]] = {k: [] for k in forms}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, f in forms.items():
                t0 = time.perf_counter()
                for _ in range(block):
                    f(sparse, dense)
                times[name].append((time.perf_counter() - t0) / block * 1000)
    return {k: round(float(np.median(v)), 3) for k, v in times.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--report", default=None, help="write the result as JSON here")


def run(_settings: object, args: argparse.Namespace) -> int:
    ms = compare(args.candidates, args.rounds)
    out = {"candidates": args.candidates, "median_ms": ms,
           "fused_vs_float": round(ms["fused"] / ms["float"], 3),
           "fused_vs_int8": round(ms["fused"] / ms["int8"], 3),
           "fused_bf16_vs_fused": round(ms["fused_bf16"] / ms["fused"], 3),
           "bf16_native": bf16_native()}
    print(json.dumps(out, indent=2))
    if args.report:
        write_json(args.report, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.fused", description=__doc__)
    add_arguments(p)
    return run(None, p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
