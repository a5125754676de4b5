"""Train a model, evaluate it, store it in the model registry; or move the registry pointer.

  recsys train --dataset DIR --model two_tower --report out.json [--epochs N] [--device cuda]
               [--batch-size N] [--dim D] [--out REGISTRY_DIR] [--promote]
  recsys train promote NAME VERSION      point NAME's "current" at VERSION (e.g. v3)
  recsys train rollback NAME             point it back at the previously promoted version
  recsys train list [NAME]               versions, their headline metrics, which is current

The registry lives in <state_dir>/models unless --out names another folder. A trained model is
registered as a new version and only becomes current with --promote or `recsys train promote`.
Two-tower datasets are SR-GNN-format folders (train_sessions.txt.gz, test_prefix_label.tsv.gz).

  recsys train --model mmoe|deepfm|deepfm_click|rankers --report out.json [--dataset sim|F.npz|kafka]
               [--labels final|naive|dfm|fnw] [--quantize] [--device cuda] [--promote]
Rankers train on simulator data by default (sim.shop driving the offline builder), on saved
rows, or on the training-examples topic (`kafka`); MMoE is registered as `ranker`, the name the
scorer serves and hot-reloads.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from core.settings import Settings
from models.registry import ModelRegistry, RegistryError, default_root

HELP = "train/evaluate a model into the registry; promote or roll back versions"


def _train_two_tower(settings: Settings, args: argparse.Namespace) -> int:
    from models.device import DeviceError
    from models.session_data import DatasetError
    from models.train_two_tower import config_from_args, run

    try:
        out = run(
            args.dataset, args.report, config_from_args(args), args.device, args.threads,
            registry_root=_root(settings, args), promote=args.promote,
        )
    except (DatasetError, DeviceError) as exc:
        print(f"recsys train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: out[k] for k in ("model", "p_at_20", "mrr_at_20", "train_s", "device")}))
    return 0


def _train_ranker(settings: Settings, args: argparse.Namespace) -> int:
    from recsys.cli.ranker_options import train_ranker_cli

    if args.model == "rankers":
        args.model = "all"
    return train_ranker_cli(settings, args)


# --model NAME -> trainer(settings, args) -> exit code. Add new models here.
TRAINERS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "two_tower": _train_two_tower,
    "mmoe": _train_ranker,  # registered as "ranker" (what the scorer serves)
    "deepfm": _train_ranker,  # single-task purchase baseline: "ranker_deepfm"
    "deepfm_click": _train_ranker,  # single-task click baseline: "ranker_deepfm_click"
    "rankers": _train_ranker,  # all three, with the comparison
}


def _root(settings: Settings, args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else default_root(settings.state_dir)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models.train_two_tower import add_train_arguments

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", choices=sorted(TRAINERS), default="two_tower")
    p.add_argument("--out", "--registry", dest="out", metavar="DIR",
                   help="model registry root (default <state_dir>/models)")
    p.add_argument("--promote", action="store_true", help="make the new version current")
    add_train_arguments(p)
    from recsys.cli.ranker_options import add_ranker_arguments

    add_ranker_arguments(p)
    acts = p.add_subparsers(dest="action", metavar="[ACTION]", required=False,
                            title="actions (instead of training)")
    for name, help_, args_ in (
        ("promote", "make VERSION of NAME current", ("name", "version")),
        ("rollback", "go back to the previously promoted version of NAME", ("name",)),
        ("list", "list versions (of NAME, or of every model)", ("name?",)),
    ):
        sp = acts.add_parser(name, help=help_)
        for a in args_:
            sp.add_argument(a.rstrip("?"), nargs="?" if a.endswith("?") else None)
        sp.add_argument("--out", "--registry", dest="out", metavar="DIR", default=argparse.SUPPRESS,
                        help="model registry root (default <state_dir>/models)")


def run(settings: Settings, args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action is None:
        needed = ("dataset", "report") if args.model == "two_tower" else ("report",)
        if args.model != "two_tower" and not args.dataset:
            args.dataset = "sim"  # rankers: the simulator by default, or FILE.npz, or kafka
        missing = [f"--{n}" for n in needed if not getattr(args, n)]
        if missing:
            print(f"recsys train: {' and '.join(missing)} required to train "
                  "(or use an action: promote, rollback, list)", file=sys.stderr)
            return 2
        return TRAINERS[args.model](settings, args)
    reg = ModelRegistry(_root(settings, args))
    try:
        if action == "promote":
            mv = reg.promote(args.name, args.version)
            print(f"{mv.name}: current is now {mv.version} ({mv.path})")
        elif action == "rollback":
            mv = reg.rollback(args.name)
            print(f"{mv.name}: rolled back, current is now {mv.version} ({mv.path})")
        else:
            _list(reg, args.name)
    except RegistryError as exc:
        print(f"recsys train {action}: {exc}", file=sys.stderr)
        return 2
    return 0


def _list(reg: ModelRegistry, name: str | None) -> None:
    names = [name] if name else reg.names()
    if not names:
        print(f"no models under {reg.root}")
    for n in names:
        ptr = reg.pointer(n) or {}
        for v in reg.versions(n):
            mv = reg.get(n, v)
            mark = "*" if ptr.get("version") == v else " "
            head = {k: mv.metrics[k] for k in ("p_at_20", "mrr_at_20", "auc_purchase", "auc_click",
                                               "max_ece") if k in mv.metrics}
            print(f"{mark} {n} {v} {json.dumps(head)}")
