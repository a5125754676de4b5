"""Command-line face of the ranker trainer (``models.train_ranker``): its options and where its
rows come from (``--dataset sim | FILE.npz | kafka``), shared by ``recsys train`` and
``recsys retrain``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from models import delayed_feedback as DF
from models.ranker_fit import MODELS, Log, RankerTrainConfig
from models.ranking_dataset import RankingData
from models.train_ranker import DataLoader, run
from sim.training_set import TrainingSetConfig


def ranking_data_loader(settings: Any, args: argparse.Namespace) -> DataLoader:
    """``--dataset``: ``sim`` (the seeded shop through the production code paths), a saved
    ``FILE.npz``, or ``kafka`` (the label join's ``training-examples`` topic)."""
    dataset = args.dataset

    def load(log: Log) -> RankingData:
        if not dataset or dataset == "sim":
            from sim.config import load_config
            from sim.training_set import simulate

            cfg = TrainingSetConfig(days=args.sim_days, sessions_per_h=args.sim_rate,
                                    click_window_s=settings.click_window_s,
                                    purchase_window_s=settings.purchase_window_s)
            return simulate(cfg, settings, log, world=load_config(settings, args.world))
        if dataset.endswith(".npz"):
            return RankingData.load(dataset)
        if dataset == "kafka":
            from models import training_examples as TE

            return TE.load_training_examples(TE.consume_training_examples(settings))
        raise ValueError(f"--dataset for rankers: sim | FILE.npz | kafka, not {dataset!r}")

    return load


def add_ranker_arguments(p: argparse.ArgumentParser, standalone: bool = False) -> None:
    """Ranker options. ``standalone`` also adds the options ``recsys train`` already shares
    with the two-tower trainer (--model, --dataset, --report, --device, --threads, --epochs,
    --batch-size, --lr, --patience, --seed, --out, --promote)."""
    d, s = RankerTrainConfig(), TrainingSetConfig()
    g = p.add_argument_group("rankers (deepfm, mmoe)")
    g.add_argument("--labels", choices=DF.LABEL_MODES, default=d.labels,
                   help="purchase labels (delayed feedback)")
    g.add_argument("--calibration", choices=("auto", "platt", "isotonic", "none"), default=d.calibration)
    g.add_argument("--neg-ratio", type=float, default=d.neg_ratio,
                   help="keep this share of all-negative rows, weighted 1/ratio (importance weights)")
    g.add_argument("--position-debias", action=argparse.BooleanOptionalAction, default=d.position_debias,
                   help="train with the shown position (PAL, models.position_bias); serve position-free")
    g.add_argument("--refit", action=argparse.BooleanOptionalAction, default=d.refit,
                   help="after early stopping, train a fresh model on train + valid for the chosen "
                        "epoch count and export that one (calibrated on valid; models.train_ranker)")
    g.add_argument("--sim-days", type=float, default=s.days, help="simulated days (2 of warm-up)")
    g.add_argument("--sim-rate", type=float, default=s.sessions_per_h, help="shopper sessions per sim hour")
    g.add_argument("--world", metavar="TOML", help="world file (as `recsys sim --world`)")
    g.add_argument("--save-data", metavar="NPZ", help="save the built ranking rows (reuse with --dataset)")
    g.add_argument("--artifacts", metavar="DIR", help="model folders (default <state_dir>/rankers)")
    g.add_argument("--quantize", action="store_true", help="the checkpoint asks for INT8 serving")
    g.add_argument("--embed-dim", type=int, default=8)
    g.add_argument("--ranker-dropout", type=float, default=0.1)
    g.add_argument("--hidden", default="128,64", help="DeepFM MLP / MMoE expert layer sizes")
    g.add_argument("--experts", type=int, default=4, help="MMoE experts")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    if standalone:
        p.add_argument("--model", choices=(*MODELS, "all"), default="all")
        p.add_argument("--dataset", default="sim", help="sim (default) | FILE.npz | kafka")
        p.add_argument("--report", help="write the JSON report here")
        p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--epochs", type=int, default=d.epochs)
        p.add_argument("--batch-size", type=int, default=d.batch_size)
        p.add_argument("--lr", type=float, default=d.lr)
        p.add_argument("--patience", type=int, default=d.patience)
        p.add_argument("--seed", type=int, default=d.seed)
        p.add_argument("--out", "--registry", dest="out", metavar="DIR", help="model registry root")
        p.add_argument("--promote", action="store_true")


def train_ranker_cli(settings: Any, args: argparse.Namespace) -> int:
    """``recsys train --model deepfm|mmoe|rankers``: the registry defaults to <state_dir>/models."""
    from models.device import DeviceError
    from models.registry import default_root

    if not getattr(args, "out", None):
        args.out = str(default_root(settings.state_dir))
    try:
        report = run(settings, args, ranking_data_loader(settings, args))
    except (DeviceError, ValueError) as exc:
        print(f"recsys train: {exc}", file=sys.stderr)
        return 2
    if report:
        print(json.dumps(report["comparison"], default=float))
    return 0


__all__ = ["add_ranker_arguments", "ranking_data_loader", "train_ranker_cli"]
