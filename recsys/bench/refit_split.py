"""Should the live retrain also learn from its validation slice? (the learning-loop issue)

    python -m recsys.bench.refit_split --days 0.125,0.45 --report reports/refit_split.json

The retrain splits its examples by time 70 / 15 / 15: it trains on the oldest 70%, stops early
on the next 15% and gates on the newest 15%, so the freshest 30% never reach the weights. This
compares, on the simulated shop of a VALIDATION world (``--world-seed`` 0; the live
measurements use 7 / 11 / 23) at the live run's density (860 shopper sessions per sim hour),
for each recorded length in ``--days`` (0.125 = 3 sim hours, a mid-run round; 0.45 = a run's
end):

* ``A``: the live practice: the MMoE of the live retrain (``--hidden 32``, 3 epochs) on the
  70%, early-stopped on the next 15%;
* ``B``: the same model refitted on the 70% + 15% for A's best epoch count (no early stopping).

Both are scored on the same newest 15%: each request's shown slate ranked by the click head,
NDCG@10 against the TRUE position-free relevance, seed-mean per request, paired bootstrap of
B - A. Calibration: each model's per-head Platt calibrators are fitted on the 15% validation
slice (A: out of sample; B: in sample, it trained on it) and judged by their ECE on the newest
15% at the shown positions, as the promotion gate judges them (``max_ece`` 0.02).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np
import torch

from core.reports import write_json
from core.settings import Settings
from models.position_bias import bootstrap_mean_diff, calibrate_and_evaluate_shown
from models.ranker_eval import predict_raw
from models.ranker_fit import RankerTrainConfig, fit, make_model
from models.ranking_dataset import RankingData
from recsys.bench.live_world import add_live_world_arguments, hidden_of, live_data, live_world
from recsys.bench.position_debias import per_request_ndcg
from sim.config import WorldConfig

CPU = torch.device("cpu")


def ndcg_of(model: Any, test: RankingData, world: WorldConfig) -> Any:
    return per_request_ndcg(test, predict_raw(model, test, CPU)[:, 0], world)


def calibrated_ece(model: Any, bias: Any, valid: RankingData, test: RankingData) -> dict[str, float]:
    """Per-head ECE on ``test`` at the shown positions after Platt calibration on ``valid``."""
    _cals, heads, _curves = calibrate_and_evaluate_shown(model, bias, valid, test, CPU, "auto")
    return {t: h["calibrated"]["ece"] for t, h in heads.items()}


def compare(days: float, args: argparse.Namespace, settings: Settings, world: WorldConfig) -> dict[str, Any]:
    data, (train, valid, test) = live_data(days, args, settings, world)
    both = data.take(np.flatnonzero(data.times < test.times.min()))  # train + valid (time_split)
    hidden = hidden_of(args)
    scores: dict[str, list[Any]] = {"A": [], "B": []}
    epochs = []
    ece: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for seed in (int(s) for s in args.seeds.split(",")):
        a = make_model("mmoe", train, seed=seed, hidden=hidden)
        res = fit(a, train, valid, RankerTrainConfig(epochs=args.epochs, seed=seed, log_every_s=1e9), CPU,
                  log=lambda _m: None)
        b = make_model("mmoe", both, seed=seed, hidden=hidden)
        res_b = fit(b, both, None, RankerTrainConfig(epochs=res.best_epoch, seed=seed, log_every_s=1e9), CPU,
            log=lambda _m: None)
        scores["A"].append(ndcg_of(a, test, world))
        scores["B"].append(ndcg_of(b, test, world))
        epochs.append(res.best_epoch)
        ece["A"].append(calibrated_ece(a, res.position_bias, valid, test))
        ece["B"].append(calibrated_ece(b, res_b.position_bias, valid, test))
        print(f"  {days} days, seed {seed}: best epoch {res.best_epoch}  A {scores['A'][-1].mean():.4f}  "
              f"B {scores['B'][-1].mean():.4f}  ECE A {ece['A'][-1]}  B {ece['B'][-1]}",
              file=sys.stderr, flush=True)
    mean_a, mean_b = np.mean(scores["A"], axis=0), np.mean(scores["B"], axis=0)
    ci = bootstrap_mean_diff(mean_b, mean_a, args.bootstrap)
    return {"days": days, "rows": {"train": len(train), "valid": len(valid), "test": len(test)},
            "requests": int(mean_a.size), "best_epochs": epochs,
            "A_train70": round(float(mean_a.mean()), 5), "B_refit85": round(float(mean_b.mean()), 5),
            "diff": float(mean_b.mean() - mean_a.mean()), "diff_ci95": ci["diff_ci95"],
            "max_ece": {k: max(max(e.values()) for e in v) for k, v in ece.items()}, "ece": ece}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.refit_split", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_live_world_arguments(p)
    p.add_argument("--days", default="0.125,0.45", help="recorded sim days, one comparison each")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    settings, world = live_world(args)
    rows = [compare(float(d), args, settings, world) for d in args.days.split(",")]
    for r in rows:
        print(f"{r['days']} days ({r['rows']['train']} training rows): NDCG@10 A (70%) {r['A_train70']:.4f}  "
              f"B (refit on 85%) {r['B_refit85']:.4f}  diff {r['diff']:+.4f} "
              f"[{r['diff_ci95'][0]:+.4f}, {r['diff_ci95'][1]:+.4f}]  ({r['requests']} requests); "
              f"worst head ECE A {r['max_ece']['A']:.4f} B {r['max_ece']['B']:.4f}")
    if args.report:
        write_json(args.report, {"command": " ".join(["python -m recsys.bench.refit_split",
                                                      *(sys.argv[1:] if argv is None else argv)]),
                                 "world_seed": args.world_seed, "comparisons": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
