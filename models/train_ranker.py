"""Train, calibrate, evaluate, export and register the rankers (DeepFM, MMoE).

Data (``RankingData``, handed in by the caller): simulator ranking rows built through the
production code paths (``sim.training_set``) or real ``training-examples`` records; split by
time into train / valid / test (70/15/15, never random). Each model: AdamW, early stopping on
the validation log loss of its heads; per-head calibration (``models.calibration``) fitted on
the validation split; AUC, log loss and ECE on the test split before and after calibration; loss
curves and reliability plots; checkpoint (``models.ranker_runtime``) evaluated again through the
serving runtime in float and INT8, with ``predict`` latency for 500 candidates; registered in
the model registry (``ranker`` = the MMoE the scorer serves, ``ranker_deepfm``,
``ranker_deepfm_click``).

Position debiasing (``--position-debias``, default on; ``models.position_bias``, PAL): every
head's observed log-probability in training is ``model(sparse, dense) + log examine(pos)``, a
learned examination curve with examine(0) = 1, so the model learns "the probability if shown at
the top" and is served without a position. Validation loss, calibration and test metrics use
the predictions at the shown positions (top-slot · examine(pos)) against the observed labels:
each head's calibrator is fitted on (prediction · examine(pos), label), so served at the top
(examine = 1) it returns a top-slot probability, and AUC / log loss / ECE stay comparable with
a model trained without debiasing. Recorded in the report (``position_debias``: the curve), the
checkpoint's config and meta. (The serving report scores the position-free output against
labels seen at the shown positions: the runtime has no position.)

Purchase labels (``--labels``): ``final`` (the eventual truth, what keeping the latest example
version gives once the attribution window has passed), ``naive`` (what is observed at the
end of the training period: late purchases look negative), ``dfm`` (observed + the delay-CDF
likelihood of ``models.delayed_feedback``), ``fnw`` (the fake-negative-weighted stream).

    recsys train --model rankers --report reports/rankers.json [--device cuda]
    torchrun --nproc_per_node 2 -m recsys.cli.main train --model mmoe --report r.json  # DDP (gloo)

The training core (config, fit loop, refit) is ``models.ranker_fit``. ``--refit``: after early
stopping, a fresh model is trained on train + valid for the chosen epoch count and it is what
gets calibrated (on valid, which it has seen: Platt's two parameters per head; the test split
judges the result), evaluated and exported (``recsys retrain`` uses it: the newest rows before
its gate slice reach the weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from models import calibration as C
from models import offline_metrics as metrics
from models.distributed import Dist, device_for, init_from_env
from models.position_bias import calibrate_and_evaluate_shown, shown_predictions
from models.position_bias import report as position_report
from models.ranker_eval import calibrate_and_evaluate, paired_bootstrap, predict_raw
from models.ranker_fit import MODELS, Log, RankerTrainConfig, _stderr, fit, make_model, refit_on
from models.ranking_dataset import RankingData, time_split

REGISTRY_NAMES = {"mmoe": "ranker", "deepfm": "ranker_deepfm", "deepfm_click": "ranker_deepfm_click"}


# --- the pipeline ----------------------------------------------------------------------------


def train_one(name: str, parts: tuple[RankingData, RankingData, RankingData], tcfg: RankerTrainConfig,
              device: torch.device, d: Dist, out_dir: Path, opts: Mapping[str, Any], log: Log,
              preds: dict[str, npt.NDArray[np.float64]]) -> dict[str, Any]:
    train, valid, test = parts

    def build(rows: RankingData) -> Any:
        return make_model(name, rows, dropout=float(opts.get("dropout", 0.1)), seed=tcfg.seed,
                          embed_dim=int(opts.get("embed_dim", 8)),
                          hidden=tuple(opts.get("hidden") or (128, 64)),
                          n_experts=int(opts.get("experts", 4)), position_debias=tcfg.position_debias)

    model = build(train)
    log(f"{name}: training heads {model.config.tasks} on {len(train)} rows ({tcfg.labels} labels)")
    res = first = fit(model, train, valid, tcfg, device, d, log=log)
    if tcfg.refit and len(valid):
        model, res = refit_on(build, train, valid, first, tcfg, device, d, log=log)
    if not d.is_main:
        return {}
    bias = res.position_bias
    if bias is None:
        cals, heads, curves = calibrate_and_evaluate(model, valid, test, device, tcfg.calibration)
        preds[name] = predict_raw(model, test, device)
    else:  # calibrated and evaluated at the shown positions (the module docstring says why)
        cals, heads, curves = calibrate_and_evaluate_shown(model, bias, valid, test, device, tcfg.calibration)
        preds[name] = shown_predictions(model, bias, test, device)
    debias = position_report(bias, train.position)
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    from models.ranker_runtime import save_checkpoint, serving_report

    version = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-s{tcfg.seed}"
    path = save_checkpoint(folder / "model.pt", model.cpu(), cals, version,
                           meta={"quantize": bool(opts.get("quantize")), "labels": tcfg.labels,
                                 "examination": debias.get("examination")})
    model.to(device)
    out = {"model": name, "version": version, "tasks": list(model.config.tasks), "test": heads,
           "best_epoch": first.best_epoch, "epochs_run": first.epochs_run,
           "train_s": round(first.train_s + (res.train_s if res is not first else 0.0), 1),
           "history": first.history,
           "refit": {"rows": len(train) + len(valid), "epochs": res.epochs_run,
                     "train_s": round(res.train_s, 1), "history": res.history} if res is not first else None,
           "label_info": res.info, "position_debias": debias,
           "params": sum(p.numel() for p in model.parameters()),
           "serving": serving_report(path, test.sparse, test.dense, test.labels,
                                     list(opts.get("features") or [])),
           "files": ["model.pt", *C.plot_curves(folder, name, res.history, curves),
                     C.plot_head_auc(folder, name, heads), "metrics.json"]}
    (folder / "metrics.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
    for t, h in heads.items():
        log(f"{name} {t}: AUC {h['raw']['auc']:.4f} logloss {h['raw']['logloss']:.5f} ECE "
            f"{h['raw']['ece']:.4f} -> {h['calibrated']['ece']:.4f} ({h['calibrator']}), adaptive ECE "
            f"{h['raw']['ece_adaptive']:.4f} -> {h['calibrated']['ece_adaptive']:.4f}")
    return out


DataLoader = Callable[[Log], RankingData]


def run(settings: Any, args: argparse.Namespace, load_data: DataLoader, log: Log = _stderr) -> dict[str, Any]:
    """Train, evaluate and register ``args.model`` on the rows ``load_data`` gives (called once
    per process, after the process group is up)."""
    from models.device import describe, resolve_device
    from models.registry import ModelRegistry

    d = init_from_env(args.device)
    log = log if d.is_main else (lambda _m: None)  # rank 0 speaks for all
    try:
        device = resolve_device(device_for(d, args.device), args.threads)
        names = list(MODELS) if args.model in ("all", "rankers") else [args.model]
        data = load_data(log)
        if args.save_data and d.is_main:
            data.save(args.save_data)
        tr, va, te = time_split(data.times, 0.15, 0.15)
        parts = (data.take(tr), data.take(va), data.take(te))
        tcfg = RankerTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, patience=args.patience,
                           seed=args.seed, labels=args.labels, calibration=args.calibration,
                           window_ms=int(settings.purchase_window_s * 1000),
                           neg_ratio=getattr(args, "neg_ratio", 1.0),
                           position_debias=getattr(args, "position_debias", True),
                           refit=getattr(args, "refit", False))
        out_dir = Path(args.artifacts or Path(settings.state_dir) / "rankers")
        opts = {"quantize": args.quantize, "embed_dim": args.embed_dim, "dropout": args.ranker_dropout,
                "hidden": [int(h) for h in args.hidden.split(",")], "experts": args.experts,
                "features": data.meta.get("sample_features") or []}
        preds: dict[str, npt.NDArray[np.float64]] = {}
        results = {n: train_one(n, parts, tcfg, device, d, out_dir, opts, log, preds) for n in names}
        if not d.is_main:
            return {}
        test = parts[2]
        report: dict[str, Any] = {
            "device": describe(device), "world_size": d.world, "torch": torch.__version__,
            "data": {k: v for k, v in data.meta.items() if k != "sample_features"} | {
                "rows": len(data), "train": len(tr), "valid": len(va), "test": len(te),
                "test_purchases": int(test.labels[:, 2].sum())},
            "train_config": dataclasses.asdict(tcfg), "artifacts": str(out_dir), "models": results,
        }
        cmp: dict[str, Any] = {f"{m}_purchase_auc": r["test"]["purchase"]["raw"]["auc"]
                               for m, r in results.items() if "purchase" in r["test"]}
        if not np.isnan(test.p_click_true).any() and 0 < test.labels[:, 2].sum() < len(test):
            # the hidden truth without position bias: the best a position-free ranker can do
            truth = test.p_click_true * np.log2(test.position + 2.0)
            cmp["oracle_purchase_auc"] = metrics.auc(test.labels[:, 2], truth)
            cmp["oracle_click_auc"] = metrics.auc(test.labels[:, 0], truth)
        if {"mmoe", "deepfm"} <= set(results):
            cmp["mmoe_minus_deepfm_purchase_auc"] = cmp["mmoe_purchase_auc"] - cmp["deepfm_purchase_auc"]
            cmp["mmoe_minus_deepfm_ci95"] = paired_bootstrap(
                test.labels[:, 2], preds["mmoe"][:, -1], preds["deepfm"][:, 0], test.request)
        cmp["max_calibrated_ece"] = max(h["calibrated"]["ece"] for r in results.values()
                                        for h in r["test"].values())
        report["comparison"] = cmp
        root = getattr(args, "out", None)
        if root:
            reg = ModelRegistry(root)
            for n, r in results.items():
                head = {**{f"auc_{t}": h["raw"]["auc"] for t, h in r["test"].items()},  # for `train list`
                        "max_ece": max(h["calibrated"]["ece"] for h in r["test"].values()),
                        **{k: v for k, v in r.items() if k != "history"}}
                version = reg.register(REGISTRY_NAMES[n], out_dir / n, head,
                                       {"model": n, "version": r["version"]})
                if args.promote:
                    reg.promote(REGISTRY_NAMES[n], version)
                r["registry"] = {"name": REGISTRY_NAMES[n], "version": version,
                                 "promoted": bool(args.promote)}
                log(f"registered {REGISTRY_NAMES[n]} {version} under {root}")
        if args.report:
            write_json(args.report, report)
        log("comparison: " + json.dumps(cmp, default=float))
        return report
    finally:
        d.close()
