"""Does a hashed user-id embedding help the live ranker? (the learning-loop issue, item 1)

    python -m recsys.bench.user_embedding --report reports/user_embedding.json

Data: the simulated shop (``sim.training_set.simulate``) of the default world at the live
run's density (``--rate`` 860 shopper sessions per sim hour, ``--days`` 0.5 recorded: about
what a 600 s ``recsys up`` at 60x produces), on a VALIDATION world seed (``--world-seed`` 0; the
live measurements use 7 / 11 / 23), split by time 70 / 15 / 15. The MMoE of the live retrain
(``--hidden 32``, 3 epochs) is trained on the same rows with and without the ``user_id`` sparse
field (``features.ranking_features.SPARSE``: the shopper's id hashed into its own rows of the
embedding table, ``models.deepfm.DEFAULT_BUCKETS``, like every sparse field), for each training
seed.

Measured on the validation and the test period: each request's shown items ranked by the
click head against the TRUE position-free relevance (``p_click_true / examine(pos)``), NDCG@10
per request, mean over seeds, with a paired bootstrap over requests of the difference; the
same for requests of shoppers with at least ``--seen-rows`` rows in the training period
(where an id embedding has something to remember); click AUC / log loss at the shown
positions. The decision (add the field to the served ranker or not) is taken on the
validation period; the test period is reported beside it, never used to choose.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from features.ranking_features import SPARSE
from models import offline_metrics as metrics
from models.position_bias import bootstrap_mean_diff
from models.ranker_eval import predict_raw
from models.ranker_fit import RankerTrainConfig, fit, make_model
from models.ranking_dataset import RankingData
from recsys.bench.live_world import Parts, add_live_world_arguments, hidden_of, live_data, live_world
from recsys.bench.position_debias import per_request_ndcg, rankable
from sim.config import WorldConfig

USER_FIELD = "user_id"
USER_COL = SPARSE.index(USER_FIELD)
ARMS = ("base", "user_id")  # without the field (FEATURE_VERSION 2's ranker) / with it


def without_user_column(data: RankingData) -> RankingData:
    out = data.take(np.arange(len(data)))
    out.sparse = np.delete(data.sparse, USER_COL, axis=1)
    return out


def seen_mask(train: RankingData, part: RankingData, min_rows: int) -> npt.NDArray[np.bool_]:
    """Rows of ``part`` whose user (hashed) has >= min_rows rows in ``train``."""
    ids, counts = np.unique(train.sparse[:, USER_COL], return_counts=True)
    often = set(ids[counts >= min_rows].tolist())
    return np.array([u in often for u in part.sparse[:, USER_COL].tolist()], dtype=bool)


def train_arm(arm: str, parts: Parts, seed: int,
              args: argparse.Namespace, world: WorldConfig) -> dict[str, Any]:
    """One training run; per-request NDCG [R] on valid / test (all and seen users), click
    metrics at the shown positions."""
    full = parts
    if arm == "base":  # the same rows without the user column
        parts = (without_user_column(parts[0]), without_user_column(parts[1]), without_user_column(parts[2]))
    train, valid, test = parts
    cpu = torch.device("cpu")
    tcfg = RankerTrainConfig(epochs=args.epochs, lr=args.lr, seed=seed, log_every_s=1e9)
    fields = SPARSE if arm == "user_id" else tuple(f for f in SPARSE if f != USER_FIELD)
    model = make_model("mmoe", train, seed=seed, hidden=hidden_of(args), sparse=fields)
    res = fit(model, train, valid, tcfg, cpu, log=lambda _m: None)
    out: dict[str, Any] = {"arm": arm, "seed": seed, "best_epoch": res.best_epoch,
                           "train_s": round(res.train_s, 1)}
    for name, part, ref in (("valid", valid, full[1]), ("test", test, full[2])):
        p = predict_raw(model, part, cpu)
        seen = seen_mask(full[0], ref, args.seen_rows)
        out[f"{name}_ndcg"] = per_request_ndcg(part, p[:, 0], world)
        keep = np.flatnonzero(seen)
        out[f"{name}_seen_ndcg"] = per_request_ndcg(part.take(keep), p[keep, 0], world)
        out[f"{name}_click"] = {"auc": metrics.auc(part.labels[:, 0], p[:, 0]),
                                "logloss": metrics.log_loss(part.labels[:, 0], p[:, 0])}
    print(f"  {arm:8s} seed {seed}: valid NDCG {out['valid_ndcg'].mean():.4f} seen "
          f"{out['valid_seen_ndcg'].mean():.4f} ({res.train_s:.0f}s)", file=sys.stderr, flush=True)
    return out


def summarise(runs: list[dict[str, Any]], key: str, n_boot: int) -> dict[str, Any]:
    """Seed-mean per-request NDCG of each arm on ``key`` and the paired difference's CI."""
    mean = {a: np.mean([r[key] for r in runs if r["arm"] == a], axis=0) for a in ARMS}
    ci = bootstrap_mean_diff(mean["user_id"], mean["base"], n_boot)
    return {"base": round(float(mean["base"].mean()), 5), "user_id": round(float(mean["user_id"].mean()), 5),
            "requests": int(mean["base"].size),
            "diff": {"mean": float(mean["user_id"].mean() - mean["base"].mean()),
                     "ci95": ci["diff_ci95"], "ratio_ci95": ci["ratio_ci95"]}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.user_embedding", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_live_world_arguments(p)
    p.add_argument("--days", type=float, default=0.5, help="recorded sim days")
    p.add_argument("--lr", type=float, default=RankerTrainConfig.lr)
    p.add_argument("--seen-rows", type=int, default=20, help="'seen' shoppers: rows in training")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    settings, world = live_world(args)
    data, parts = live_data(args.days, args, settings, world)
    n_users = int(np.unique(data.sparse[:, USER_COL]).size)
    print(f"user_embedding: {len(data)} rows, {n_users} users", file=sys.stderr, flush=True)
    runs = [train_arm(arm, parts, int(s), args, world) for s in args.seeds.split(",") for arm in ARMS]
    report: dict[str, Any] = {
        "command": " ".join(["python -m recsys.bench.user_embedding",
                             *(sys.argv[1:] if argv is None else argv)]),
        "data": {"rows": len(data), "requests": int(np.unique(data.request).size),
                 "rankable_test_rows": int(rankable(parts[2]).sum()),
                 "users": n_users,
                 "seen_share_valid": float(seen_mask(parts[0], parts[1], args.seen_rows).mean()),
                 "seen_share_test": float(seen_mask(parts[0], parts[2], args.seen_rows).mean())},
        "ndcg10_true": {k: summarise(runs, f"{k}_ndcg", args.bootstrap)
                        for k in ("valid", "valid_seen", "test", "test_seen")},
        "click": {a: {k: float(np.mean([r[f"{k}_click"]["auc"] for r in runs if r["arm"] == a]))
                      for k in ("valid", "test")} for a in ARMS},
        "runs": [{k: v for k, v in r.items() if not k.endswith("_ndcg")} for r in runs],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    v = report["ndcg10_true"]["valid"]
    report["decision"] = ("add the user-id field" if v["diff"]["ci95"][0] > 0 else
                          "leave it out: no gain on the validation period whose 95% CI excludes 0")
    for k, s in report["ndcg10_true"].items():
        d = s["diff"]
        print(f"{k:11s} NDCG@10 base {s['base']:.4f}  +user_id {s['user_id']:.4f}  diff {d['mean']:+.4f} "
              f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]  ({s['requests']} requests)")
    print(f"decision (validation period): {report['decision']}")
    if args.report:
        write_json(args.report, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
