"""Retrain the served ranker from the training-examples topic; promote only when it is better.

Each round: read every training example (latest version per example), train an MMoE into the
registry (not promoted), score the NEW and the CURRENT model on the same newest time slice
(never random), and promote the new version only if its mean head AUC beats the current one.
The scorer hot-reloads the promoted version. `recsys up` runs this every `retrain_interval_s`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from typing import Any

from core.settings import Settings
from core.signals import stop_on_signals

HELP = "retrain the ranker from training examples; promote only if it beats the current one"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--every", type=float, default=None, help="seconds between rounds (default: "
                   "retrain_interval_s); 0 = one round")
    p.add_argument("--min-examples", type=int, default=None, help="skip a round with fewer")
    p.add_argument("--epochs", type=int, default=3)


def mean_auc(labels: Any, probs: Any) -> float:
    """Mean AUC over the heads whose labels have both classes in the slice (NaN if none)."""
    from models import offline_metrics as metrics

    aucs = [metrics.auc(labels[:, c], probs[:, c]) for c in range(labels.shape[1])
            if 0 < labels[:, c].sum() < len(labels) and not math.isnan(float(probs[0, c]))]
    return float(sum(aucs) / len(aucs)) if aucs else math.nan


def heuristic_predictions(dense: Any) -> Any:
    """The heuristic ranker's probabilities from logged dense features (DENSE column order)."""
    from features.ranking_features import DENSE
    from online.ranking import HeuristicRanker

    rows = [dict(zip(DENSE, map(float, row), strict=True)) for row in dense]
    return HeuristicRanker().predict(rows)


def round_once(settings: Settings, epochs: int, min_examples: int) -> dict[str, Any]:
    from models.ranker_runtime import load_ranker
    from models.ranking_dataset import time_split
    from models.registry import ModelRegistry, default_root
    from models.train_ranker import run
    from models.training_examples import consume_training_examples, load_training_examples
    from recsys.cli.ranker_options import add_ranker_arguments

    records = consume_training_examples(settings)
    if len(records) < min_examples:
        return {"action": "skip", "reason": f"{len(records)} examples < {min_examples}"}
    data = load_training_examples(records)
    _tr, _va, te = time_split(data.times, 0.15, 0.15)
    test = data.take(te)
    root = default_root(settings.state_dir)
    reg = ModelRegistry(root)
    current = reg.current(settings.ranker_model)
    parser = argparse.ArgumentParser()
    add_ranker_arguments(parser, standalone=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = parser.parse_args(["--model", "mmoe", "--dataset", "kafka", "--out", str(root),
                                  "--epochs", str(epochs), "--threads", "1",
                                  "--artifacts", tmp, "--report", f"{tmp}/r.json"])
        run(settings, args, lambda _log: data,
            log=lambda m: print(f"[retrain] {m}", file=sys.stderr, flush=True))
    new_version = reg.versions(settings.ranker_model)[-1]
    new = load_ranker(reg.path(settings.ranker_model, new_version), threads=1)
    new_auc = mean_auc(test.labels, new.predict_arrays(test.sparse, test.dense))
    if current is not None:
        cur = load_ranker(current.path, threads=1)
        cur_auc = mean_auc(test.labels, cur.predict_arrays(test.sparse, test.dense))
    else:  # nothing promoted yet: the scorer serves the heuristic, which must be beaten too
        cur_auc = mean_auc(test.labels, heuristic_predictions(test.dense))
    better = not math.isnan(new_auc) and (math.isnan(cur_auc) or new_auc > cur_auc)
    if better:
        reg.promote(settings.ranker_model, new_version)
    return {"action": "promoted" if better else "kept", "new_version": new_version,
            "new_auc": new_auc, "current_version": current.version if current else "heuristic-v1",
            "current_auc": cur_auc, "examples": len(records), "eval_rows": len(test)}


def run(settings: Settings, args: argparse.Namespace) -> int:
    every = settings.retrain_interval_s if args.every is None else args.every
    min_examples = settings.retrain_min_examples if args.min_examples is None else args.min_examples
    stop = stop_on_signals()
    while True:
        t0 = time.monotonic()
        try:
            out = round_once(settings, args.epochs, min_examples)
        except Exception as exc:  # noqa: BLE001 - a failed round must not end the loop
            out = {"action": "error", "reason": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"retrain": out, "seconds": round(time.monotonic() - t0, 1)}), flush=True)
        if every <= 0 or stop.wait(every):
            return 0 if out["action"] != "error" else 1
