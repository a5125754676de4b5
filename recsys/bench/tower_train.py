"""Two-tower training driver: ``python -m recsys.bench.tower_train --dataset DIR`` trains (as
``recsys train --model two_tower``), or with ``--bench-steps N`` only measures examples/s on
each of ``--bench-devices`` (e.g. ``cpu,cuda`` on a GPU machine)."""

from __future__ import annotations

import argparse
import json
import sys

from models.device import DeviceError, describe, resolve_device
from models.session_data import DatasetError, load_dataset
from models.train_two_tower import TowerTrainConfig, add_train_arguments, config_from_args, run, throughput


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.tower_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_arguments(p)
    p.add_argument("--registry", help="registry root to save the model into (default: none)")
    p.add_argument("--bench-steps", type=int, default=0, help="only measure examples/s")
    p.add_argument("--bench-devices", default="cpu", help="comma-separated, e.g. cpu,cuda")
    args = p.parse_args(argv)
    if not args.dataset:
        p.error("--dataset is required")
    cfg = config_from_args(args)
    try:
        return _main(args, cfg)
    except (DatasetError, DeviceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace, cfg: TowerTrainConfig) -> int:
    if args.bench_steps:
        ds = load_dataset(args.dataset)
        for name in args.bench_devices.split(","):
            dev = resolve_device(name, args.threads)
            eps = throughput(ds, cfg, dev, args.bench_steps)
            print(json.dumps({"bench": describe(dev), "steps": args.bench_steps,
                              "batch_size": cfg.batch_size, "examples_per_s": round(eps, 1)}))
        return 0
    out = run(args.dataset, args.report, cfg, args.device, args.threads, args.registry)
    print(json.dumps({k: out[k] for k in ("model", "p_at_20", "mrr_at_20", "train_s", "device")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
