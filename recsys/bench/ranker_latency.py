"""Predict latency of a trained ranker for one request of N candidates, the scorer's path
(feature dicts in, calibrated [N, 3] out), float and INT8:

    python -m recsys.bench.ranker_latency MODEL --features DATA.npz [--candidates 500]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from models.ranker_runtime import load_ranker, measure_latency
from models.ranking_dataset import RankingData


def main(argv: list[str] | None = None) -> int:
    """``python -m recsys.bench.ranker_latency MODEL --features DATA.npz``: predict latency for one
    request of N candidates (the scorer's path: feature dicts in, calibrated [N, 3] out)."""
    p = argparse.ArgumentParser(prog="python -m recsys.bench.ranker_latency", description=main.__doc__)
    p.add_argument("model", help="model.pt or a registry version folder")
    p.add_argument("--features", required=True, help="RankingData .npz whose meta holds sample features")
    p.add_argument("--candidates", type=int, default=500)
    p.add_argument("--runs", type=int, default=300)
    args = p.parse_args(argv)
    feats = list(RankingData.load(args.features).meta.get("sample_features") or [])
    if not feats:
        print("no sample features in that file", file=sys.stderr)
        return 2
    feats = (feats * (args.candidates // len(feats) + 1))[: args.candidates]
    for q in (False, True):
        r = load_ranker(args.model, quantize_int8=q)
        print(json.dumps({"version": r.version, "threads": torch.get_num_threads(),
                          **measure_latency(r, feats, runs=args.runs)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
