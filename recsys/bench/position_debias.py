"""Does position debiasing (``models.position_bias``, PAL) rank better when position is confounded?

    python -m recsys.bench.position_debias --report reports/position_debias.json [--save-data D.npz]

Data: the simulated shop (``sim.training_set.simulate``) on a small world (``WORLD`` below)
with ``shown_order="ranked"``: each list is shown in the order of a logging policy (the
cold-start heuristic on the logged features + noise), so position is confounded with the
features. Split by time 70/15/15. The MMoE is trained without and with debiasing on the same
rows, for every learning rate of ``--lrs`` and seed of ``--seeds`` (early stopping on the
validation log loss); each arm keeps the learning rate with the best seed-mean VALIDATION NDCG
(the test split never chooses anything), and its per-request test NDCG is averaged over the
seeds.

Measured on the held-out test period: each request's shown items ranked by the model's click
head (position-free; uncalibrated: a calibrator is monotone and only adds ties) against the
TRUE position-free relevance, ``p_click_true / examine(pos)`` (``sim.world``: ``p_click =
examine(pos)·sigmoid(u)``), NDCG@10 per request, mean, and a paired bootstrap over requests of
the difference and the ratio. Requests whose truth does not vary (bots click any position at
one rate) have nothing to rank and are left out. Also reported: validation NDCG per learning
rate, the logging policy's own order, the learned examination curve against the true one, and
click AUC / log loss at the shown positions (top-slot prediction · examine(pos) for the
debiased model) against the observed clicks.

    # the quick run (a few minutes on 2 cores); the measured one, 3 learning rates x 3 seeds:
    python -m recsys.bench.position_debias --lrs 1e-3,2e-3,5e-3 --seeds 0,1,2 --jobs 8 --report R.json
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from models import offline_metrics as metrics
from models.position_bias import bootstrap_mean_diff, click_rate_ratio, ndcg_per_request, shown_predictions
from models.ranker_eval import predict_raw
from models.ranker_fit import RankerTrainConfig, fit, make_model
from models.ranking_dataset import RankingData, time_split
from sim.config import WorldConfig
from sim.training_set import TrainingSetConfig, simulate
from sim.world import position_bias

# the small world of tests/test_rankers.py: its truth leans on category taste (which the
# features see), so a short training run has something to learn
WORLD = WorldConfig().with_(catalog={"n_items": 300, "seed": 3}, users={"n_users": 400},
                            truth={"bias": -3.0, "w_category": 1.6},
                            dynamics={"new_users_per_h": 5, "new_items_per_h": 3, "retire_items_per_h": 1})
K = 10


def true_relevance(data: RankingData, world: WorldConfig) -> npt.NDArray[np.float64]:
    """Position-free P(click) [n]: the truth at the shown position / examine(position)."""
    examine = np.array([position_bias(int(p), world.truth.position_decay) for p in data.position])
    return data.p_click_true.astype(np.float64) / examine


def rankable(data: RankingData) -> npt.NDArray[np.bool_]:
    """Rows of requests whose truth varies (a bot's is one constant rate at every position)."""
    _, inv = np.unique(data.request, return_inverse=True)
    p = data.p_click_true.astype(np.float64)
    lo = np.full(inv.max() + 1, np.inf)
    hi = np.full(inv.max() + 1, -np.inf)
    np.minimum.at(lo, inv, p)
    np.maximum.at(hi, inv, p)
    return np.asarray(hi[inv] > lo[inv])


def per_request_ndcg(data: RankingData, score: npt.NDArray[Any], world: WorldConfig
                     ) -> npt.NDArray[np.float64]:
    """NDCG@K [R] of each rankable request's shown items ordered by ``score``."""
    keep = rankable(data)
    return ndcg_per_request(data.request[keep], np.asarray(score)[keep], true_relevance(data, world)[keep], K)


@dataclasses.dataclass(frozen=True)
class Job:
    """One training run: an arm (debiased or not), a learning rate, a seed."""

    debias: bool
    lr: float
    seed: int


def split(data: RankingData) -> tuple[RankingData, RankingData, RankingData]:
    tr, va, te = time_split(data.times, 0.15, 0.15)
    return data.take(tr), data.take(va), data.take(te)


def train_once(job: Job, parts: tuple[RankingData, RankingData, RankingData], args: argparse.Namespace
               ) -> dict[str, Any]:
    """Train the MMoE for ``job``; per-request NDCG on valid and test, click metrics at the
    shown positions, the learned examination curve."""
    train, valid, test = parts
    cpu = torch.device("cpu")
    tcfg = RankerTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=job.lr, seed=job.seed,
                             patience=args.patience, position_debias=job.debias, log_every_s=1e9)
    model = make_model("mmoe", train, seed=job.seed, position_debias=job.debias)
    res = fit(model, train, valid, tcfg, cpu, log=lambda _m: None)
    out: dict[str, Any] = {"job": dataclasses.asdict(job), "best_epoch": res.best_epoch,
                           "epochs_run": res.epochs_run, "train_s": round(res.train_s, 1)}
    for name, part in (("valid", valid), ("test", test)):
        out[f"{name}_ndcg"] = per_request_ndcg(part, predict_raw(model, part, cpu)[:, 0], WORLD)  # [R]
    bias = res.position_bias
    shown = predict_raw(model, test, cpu) if bias is None else shown_predictions(model, bias, test, cpu)
    out["test_click_at_shown"] = {"auc": metrics.auc(test.labels[:, 0], shown[:, 0]),
                                  "logloss": metrics.log_loss(test.labels[:, 0], shown[:, 0])}
    out["examination"] = None if bias is None else [round(x, 4) for x in bias.examination()[:K]]
    print(f"  {'debiased' if job.debias else 'biased  '} lr {job.lr:g} seed {job.seed}: valid NDCG "
          f"{out['valid_ndcg'].mean():.4f} (best epoch {res.best_epoch}, {res.train_s:.0f}s)",
          file=sys.stderr, flush=True)
    return out


def _worker(job: Job, path: str, args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    return train_once(job, split(RankingData.load(path)), args)


def run_jobs(jobs: list[Job], data: RankingData, path: str | None, args: argparse.Namespace
             ) -> list[dict[str, Any]]:
    """Every job, in ``args.jobs`` spawned processes (each loads the rows from ``path``) or here."""
    if args.jobs <= 1 or path is None:
        parts = split(data)
        return [train_once(j, parts, args) for j in jobs]
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_worker, jobs, [path] * len(jobs), [args] * len(jobs)))


def choose(runs: list[dict[str, Any]], debias: bool) -> tuple[float, list[dict[str, Any]], dict[str, float]]:
    """The arm's learning rate with the best seed-mean validation NDCG: (lr, its runs, the
    validation NDCG of every lr)."""
    by_lr: dict[float, list[dict[str, Any]]] = {}
    for r in runs:
        if r["job"]["debias"] == debias:
            by_lr.setdefault(r["job"]["lr"], []).append(r)
    valid = {lr: float(np.mean([r["valid_ndcg"].mean() for r in rs])) for lr, rs in by_lr.items()}
    best = max(valid, key=lambda lr: valid[lr])
    return best, by_lr[best], {f"{lr:g}": round(v, 5) for lr, v in valid.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.position_debias", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--data", metavar="NPZ", help="reuse rows saved with --save-data (skips the simulation)")
    p.add_argument("--save-data", metavar="NPZ")
    p.add_argument("--days", type=float, default=6.0, help="simulated days (warm-up included)")
    p.add_argument("--warmup-days", type=float, default=0.5)
    p.add_argument("--rate", type=float, default=60.0, help="shopper sessions per sim hour")
    p.add_argument("--shown-noise", type=float, default=TrainingSetConfig.shown_noise)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--lrs", default="2e-3", help="learning rates; each arm keeps its best on valid")
    p.add_argument("--seeds", default="0", help="training seeds; per-request NDCG is averaged over them")
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--jobs", type=int, default=1, help="training runs in parallel processes")
    p.add_argument("--threads", type=int, default=2, help="torch threads per training run")
    p.add_argument("--bootstrap", type=int, default=1000)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    sim_cfg = TrainingSetConfig(days=args.days, warmup_days=args.warmup_days, sessions_per_h=args.rate,
                                shown_order="ranked", shown_noise=args.shown_noise)
    data = RankingData.load(args.data) if args.data else simulate(sim_cfg, world=WORLD)
    path = args.data or args.save_data
    if args.save_data:
        data.save(args.save_data)
    with tempfile.TemporaryDirectory() as tmp:
        if path is None and args.jobs > 1:
            path = f"{tmp}/rows.npz"
            data.save(path)
        jobs = [Job(debias, float(lr), int(seed)) for debias in (False, True)
                for lr in args.lrs.split(",") for seed in args.seeds.split(",")]
        runs = run_jobs(jobs, data, path, args)
    train, _valid, test = split(data)
    arms: dict[str, Any] = {}
    ndcg: dict[str, npt.NDArray[np.float64]] = {}
    for name, debias in (("biased", False), ("debiased", True)):
        lr, chosen, valid_by_lr = choose(runs, debias)
        ndcg[name] = np.mean([r["test_ndcg"] for r in chosen], axis=0)  # [R] mean over seeds
        arms[name] = {"lr": lr, "valid_ndcg_by_lr": valid_by_lr,
                      "runs": [{k: v for k, v in r.items() if not k.endswith("_ndcg")} for r in chosen]}
    ci = bootstrap_mean_diff(ndcg["debiased"], ndcg["biased"], args.bootstrap)
    b, d = float(ndcg["biased"].mean()), float(ndcg["debiased"].mean())
    learned = np.mean([r["examination"] for r in arms["debiased"]["runs"]], axis=0)
    truth = true_relevance(data, WORLD)
    report: dict[str, Any] = {
        "command": " ".join(["python -m recsys.bench.position_debias",
                             *(sys.argv[1:] if argv is None else argv)]),
        "data": {"rows": len(data), "test": len(test), "test_requests_ranked": int(ndcg["biased"].size),
                 "sim": args.data or dataclasses.asdict(sim_cfg), **data.rates(),
                 "corr_position_true_relevance": float(np.corrcoef(data.position, truth)[0, 1])},
        "train_config": {"epochs": args.epochs, "batch_size": args.batch_size, "patience": args.patience,
                         "lrs": args.lrs, "seeds": args.seeds},
        "ndcg_at": K,
        "test_ndcg": {"biased": b, "debiased": d, "logging_policy": float(
            per_request_ndcg(test, -test.position.astype(np.float64), WORLD).mean())},
        "ratio_debiased_over_biased": d / b, "diff_debiased_minus_biased": d - b, **ci,
        "examination": {"learned": [round(float(x), 4) for x in learned],
                        "true": [round(position_bias(k, WORLD.truth.position_decay), 4) for k in range(K)],
                        "click_rate_ratio": [round(float(x), 4) for x in click_rate_ratio(
                            train.position, train.labels[:, 0], K)]},
        "arms": arms, "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(f"test NDCG@{K} against the true position-free relevance ({ndcg['biased'].size} requests): "
          f"biased {b:.4f} (lr {arms['biased']['lr']:g})  debiased {d:.4f} (lr {arms['debiased']['lr']:g})  "
          f"ratio {d / b:.4f}  diff {d - b:+.4f}, paired bootstrap 95% CI {ci['diff_ci95'][0]:+.4f} .. "
          f"{ci['diff_ci95'][1]:+.4f} (ratio {ci['ratio_ci95'][0]:.4f} .. {ci['ratio_ci95'][1]:.4f})")
    print(f"logging policy's order {report['test_ndcg']['logging_policy']:.4f}; validation NDCG by lr: "
          f"biased {arms['biased']['valid_ndcg_by_lr']}, debiased {arms['debiased']['valid_ndcg_by_lr']}")
    print(f"examination learned {report['examination']['learned']}")
    print(f"examination true    {report['examination']['true']}")
    print(f"click-rate ratio    {report['examination']['click_rate_ratio']} (where training starts)")
    if args.report:
        write_json(args.report, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
