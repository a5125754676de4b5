"""Retrain the served ranker from the training-examples topic; promote only what the gate passes.

Each round:

1. Copy what is new on the training-examples topic into the trainer's own store
   (``models.example_store``, under ``<state_dir>/training-examples/<topic>``: a topic's retention
   would otherwise decide how much history the ranker sees) and read every stored example
   (latest version per example), leaving out the rows the scorer did not rank: degraded
   responses and fallback padding (``models.training_examples``,
   counted under ``training.dropped``).
2. Train an MMoE into the registry (not promoted): early-stopped on the 15% after its oldest
   70%, then (``--refit``, default) refitted on those 85% for the chosen epoch count and
   calibrated on the 15% (``models.train_ranker``), so the newest examples before the gate's
   slice reach the weights (``recsys.bench.refit_split``: +0.014 NDCG@10 at 3 sim hours).
   Purchase labels: the latest version of an example is what the label join has seen SO FAR, so
   recent impressions whose purchase is still to come look negative (the naive label, biased
   down). The purchase head is trained with ``--labels dfm`` (``models.delayed_feedback``,
   Chapelle 2014): the observed label is Bernoulli(p·F(elapsed)) with the delay CDF F fitted on
   matured impressions, which corrects a snapshot of the stream for the purchases not arrived
   yet. Where F cannot be fitted (fewer than 20 matured purchases) it falls back to ``--labels
   fnw`` (fake-negative weighting, Ktena et al. 2019): no delay model needed, but it assumes
   every purchase has arrived as a correction, so on a snapshot it stays biased down by those
   that have not. Elapsed time is event time (cut-off minus impression time, as
   ``purchase_delay_ms``); the example's ``elapsed_ms`` is processing time and is not used.
3. Score the NEW and the SERVED model (the promoted version, or the heuristic ranker the scorer
   serves before any) on the newest time slice (the trainer's test split, never random) and
   apply the gate of ``models.promotion``: promote iff NDCG@k of the served lists re-ranked by
   the new model's value beats the served model's (graded click 1 / cart 2 / purchase 3), and
   every head of the new model has ECE < max (0.02), taken on prediction · examine(position)
   for a position-debiased model (the curve in its checkpoint's ``examination``) and, for the
   purchase head, also · F(elapsed) (the newest slice's purchase labels are incomplete).
   NDCG is taken on the slates a ranker ordered (every arm but popular and random: the
   candidates the scorer's retrieval found, which is what the new model will rank) when the
   slice has at least ``MIN_RANKED_REQUESTS`` of them with a positive, otherwise on every slate.
   The served model's own slates favour it (its items), so the gate stays conservative; the
   popular / random slates were the gate's choice before, and carried no signal: on validation
   world 0 models that beat the heuristic by +0.03..+0.10 NDCG on the ranked slates, and lifted
   the live CTR once promoted, tied with it there (BENCHMARKS.md, learning loop, sixth round).
4. Informational: a SNIPS estimate (bootstrap 95% interval) of the click rate on the explored
   slots if the new model chose the explored items (``models.promotion.explored_slot_target``).
5. Write the decision (both models' NDCG, CI, per-head ECE and AUC, the reason, slice sizes,
   time) to the registry (``ModelRegistry.record_decision``) BEFORE promoting, so a promoted
   version always has its record; print it as one JSON line. The scorer hot-reloads.
6. The two-tower on our own sessions (``models.tower_retrain``: trained on the clickstream's
   sessions with content features, promoted only when its retrieval recall on the newest
   sessions beats what the ANN source serves), its decision printed as a second JSON line:
   every ``--tower-every`` ranker rounds, or in a loop of its own with ``--only tower``.

Schedule: ``--every`` is the period from the start of one round to the start of the next (a
round longer than the period is followed by a rest of ``MIN_REST`` of it); a round skipped for
too little data is retried after ``RETRY_AFTER_SKIP_S``, so the first model is trained as soon
as there is enough traffic rather than a whole period later. `recsys up` runs two loops, each
its own process, so a long two-tower round never delays the ranker's next round:
``--only ranker`` every ``retrain_interval_s`` and ``--only tower`` every
``tower_retrain_interval_s``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from core.settings import Settings
from core.signals import stop_on_signals

if TYPE_CHECKING:
    from models.promotion import PromotionPolicy, Scored

HELP = "retrain the ranker from training examples; promote only if it passes the promotion gate"
NEW_MODEL = "mmoe"  # the trainer's name for the ranker the scorer serves
# Experts of one 32-unit layer: on validation worlds of live density (sim seed 0, not the
# measured seeds) the top-10 of rankers trained from clicks reach 0.43 of the oracle against
# 0.40 for the (128, 64) default, trained in half the time (BENCHMARKS.md, learning loop)
RETRAIN_HIDDEN = "32"
# the two-tower round costs about as much CPU as the ranker's; every other round keeps the
# trainer's share of a 2-core machine where it was
TOWER_EVERY = 2
# measured on the 2-core VM (seed 11, 600 s): with the trainer at normal priority the
# simulator's whole-run RPC p99 rose to 256 ms while a round trained (BENCHMARKS.md)
RETRAIN_NICE = 10
RETRY_AFTER_SKIP_S = 15.0  # a skipped round (too few examples / sessions) is retried this soon
MIN_REST = 0.25  # after a round longer than the period: rest this share of it (the scorer's CPU)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from models.promotion import PromotionPolicy

    d = PromotionPolicy()
    p.add_argument("--every", type=float, default=None, help="seconds between rounds (default: "
                   "retrain_interval_s); 0 = one round")
    p.add_argument("--min-examples", type=int, default=None, help="skip a round with fewer")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--hidden", default=RETRAIN_HIDDEN,
                   help="MMoE expert layer sizes of the live ranker (BENCHMARKS.md: how it was chosen)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="refit the early-stopped ranker on train + valid before the gate (module doc, "
                        "2; default: the retrain_refit setting)")
    p.add_argument("--ndcg-k", type=int, default=d.k, help="the gate's NDCG@k")
    p.add_argument("--max-ece", type=float, default=d.max_ece,
                   help="per-head ECE the new model must stay under")
    p.add_argument("--min-gain", type=float, default=d.min_gain, help="NDCG margin over the served model")
    p.add_argument("--min-slates", type=int, default=d.min_requests,
                   help="promote only with at least this many slates with a positive in the slice")
    p.add_argument("--require-ci", action="store_true", help="the NDCG gain's 95%% CI must exclude 0")
    p.add_argument("--nice", type=int, default=RETRAIN_NICE,
                   help="with --no-idle, or where SCHED_IDLE is unavailable: lower the trainer's CPU "
                        "priority by this much (0 = as started), so the scorer's requests come first")
    p.add_argument("--idle", action=argparse.BooleanOptionalAction, default=True,
                   help="run the trainer in Linux's SCHED_IDLE class: it gets a core only when no "
                        "other process wants it (falls back to --nice where unavailable)")
    p.add_argument("--tower-every", type=int, default=TOWER_EVERY,
                   help="train the two-tower on our own sessions every N ranker rounds (0 = never)")
    p.add_argument("--only", choices=("ranker", "tower"), default=None,
                   help="run one loop: the ranker's (every retrain_interval_s) or the two-tower's "
                        "(every tower_retrain_interval_s); `recsys up` runs both, one process each")


def heuristic_predictions(dense: Any) -> Any:
    """The heuristic ranker's probabilities from logged dense features (DENSE column order)."""
    from features.ranking_features import DENSE
    from online.ranking import HeuristicRanker

    rows = [dict(zip(DENSE, map(float, row), strict=True)) for row in dense]
    return HeuristicRanker().predict(rows)


def examination(ranker: Any, position: Any) -> Any:
    """examine(position) [n] of a position-debiased ranker (its checkpoint meta's learned
    ``examination`` curve; positions past it share its last value), None for any other."""
    curve = (getattr(ranker, "meta", None) or {}).get("examination")
    if not curve:
        return None
    c = np.asarray(curve, dtype=np.float64)
    return c[np.clip(np.asarray(position), 0, c.size - 1)]


def scored(settings: Settings, probs: Any, dense: Any, examine: Any = None) -> Scored:
    """``models.promotion.Scored``: the scorer's value of each row (``online.ranking.value_scores``)."""
    from features.ranking_features import COL
    from models.promotion import Scored
    from online.ranking import value_scores

    price = np.expm1(dense[:, COL["log_price"]].astype(np.float64))  # log_price = log1p(price)
    value = value_scores(np.nan_to_num(probs), price, settings.value_revenue_weight,
                         settings.value_click_weight)
    return Scored(value=value, probs=probs, examine=examine)


def purchase_labels(train: Any, window_ms: int) -> tuple[str, str]:
    """The trainer's ``--labels`` for this round and why (the module docstring, step 2)."""
    from models import delayed_feedback as DF

    try:
        DF.training_labels(train.labels, train.times, train.purchase_delay_ms, "dfm", window_ms)
    except ValueError as exc:
        return "fnw", f"no delay CDF to fit ({exc}); fake-negative weighting instead"
    return "dfm", "delayed-feedback likelihood with the delay CDF of matured impressions"


def purchase_observable(data: Any, test: Any, window_ms: int) -> tuple[Any, str]:
    """F(elapsed) of the slice's rows (share of their purchases already observable), or None."""
    from models import delayed_feedback as DF

    y = data.labels[:, 2] > 0
    now = int(max(data.times.max(), (data.times + data.purchase_delay_ms)[y].max() if y.any() else 0))
    mature = min(window_ms, (now - int(data.times.min())) // 2)
    try:
        cdf = DF.DelayCDF.from_matured(data.times, y, data.purchase_delay_ms, now, mature)
    except ValueError as exc:
        return None, f"purchase ECE against the labels seen so far ({exc})"
    f = cdf(now - test.times)
    return f, f"purchase ECE on p x F(elapsed), mean F {float(f.mean()):.3f}"


def explored_click_rate(test: Any, logged: Any, p_click: Any, epsilon: float, n_boot: int,
                        seed: int) -> dict[str, Any]:
    """SNIPS estimate of the click rate on the explored slots under "explore in proportion to
    the new model's p_click" (the logging policy explores uniformly: ``online.rerank``).
    Explored rows: logged propensity in (0, 1 - epsilon) (exploit items of a reserved slot
    have 1 - epsilon, other positions 1; ambiguous for epsilon >= 0.5)."""
    from models import promotion as P

    mu = logged.propensity
    explored = (mu > 0) & (mu < 1.0 - epsilon - 1e-9)
    out: dict[str, Any] = {"policy": "explore in proportion to the new model's p_click",
                           "epsilon": epsilon, "explored_rows": int(explored.sum())}
    if not explored.any():
        out["note"] = "no explored rows with a logged propensity in the slice"
        return out
    clicks = (test.labels[explored, 0] > 0).astype(np.float64)
    target = P.explored_slot_target(np.nan_to_num(p_click[explored]), mu[explored], epsilon)
    out["snips"] = P.snips(clicks, target, mu[explored], test.request[explored], n_boot, seed)
    out["logging_click_rate"] = float(clicks.mean())  # the uniform explorer's, for comparison
    return out


MIN_RANKED_REQUESTS = 30  # ranked slates with a positive the gate needs before it uses them alone


def ranked_slates(test: Any, logged: Any) -> tuple[Any, str]:
    """Rows of the slates a ranker ordered (module doc, step 3), when there are enough of
    them with a positive; else every row (None)."""
    from online.servicer import UNRANKED_ARMS

    ranked = ~np.isin(logged.arm, UNRANKED_ARMS)
    positive = np.unique(test.request[ranked & (test.labels.max(axis=1) > 0)])
    arms = ", ".join(sorted(set(logged.arm[ranked].tolist())))
    if ranked.all():
        return None, f"NDCG on every slate ({positive.size} with a positive, all ranked: {arms})"
    if positive.size >= MIN_RANKED_REQUESTS:
        return ranked, f"NDCG on the {positive.size} slates with a positive that a ranker ordered ({arms})"
    return None, (f"NDCG on every slate (only {positive.size} ranked slates with a positive, "
                  f"< {MIN_RANKED_REQUESTS})")


def served_ranker(current: Any) -> tuple[Any, str]:
    """The ranker the scorer serves for the promoted version ``current``: (loaded model, note),
    or (None, why) when it serves the heuristic: nothing promoted, or a checkpoint this code
    refuses (another ``FEATURE_VERSION`` after an upgrade: ``online.ranking.ModelHolder`` keeps
    the heuristic then, so the gate must compare against the heuristic too, not fail)."""
    from models.ranker_runtime import RankerError, load_ranker

    if current is None:
        return None, "nothing promoted: the scorer serves the heuristic"
    try:
        return load_ranker(current.path, threads=1), f"promoted {current.version}"
    except RankerError as exc:
        return None, f"promoted {current.version} is refused ({exc}): the scorer serves the heuristic"


def round_once(settings: Settings, epochs: int, min_examples: int,
               policy: PromotionPolicy | None = None, hidden: str = RETRAIN_HIDDEN,
               refit: bool | None = None) -> dict[str, Any]:
    """One round (module doc); ``refit`` None: the ``retrain_refit`` setting."""
    from models import promotion as P
    from models.example_store import ExampleStore
    from models.ranker_runtime import load_ranker
    from models.ranking_dataset import time_split
    from models.registry import ModelRegistry, default_root
    from models.train_ranker import run
    from models.training_examples import load_logged_examples
    from recsys.cli.ranker_options import add_ranker_arguments

    policy = policy or P.PromotionPolicy()
    refit = settings.retrain_refit if refit is None else refit
    store = ExampleStore.for_settings(settings)
    synced = store.sync(settings)
    records = store.records()
    if len(records) < min_examples:
        return {"action": "skip", "reason": f"{len(records)} examples < {min_examples}"}
    data, logged = load_logged_examples(records, drop_fallback=True)
    dropped = data.meta["dropped"]
    if len(data) < min_examples:
        return {"action": "skip", "reason": f"{len(data)} examples < {min_examples} after dropping "
                f"{dropped}"}
    tr, va, te = time_split(data.times, 0.15, 0.15)  # the trainer's split: te is its test part
    window_ms = int(settings.purchase_window_s * 1000)
    labels, labels_why = purchase_labels(data.take(tr), window_ms)
    test, test_logged = data.take(te), logged.take(te)
    root = default_root(settings.state_dir)
    reg = ModelRegistry(root)
    name = settings.ranker_model
    current = reg.current(name)
    parser = argparse.ArgumentParser()
    add_ranker_arguments(parser, standalone=True)
    with tempfile.TemporaryDirectory() as tmp:
        args = parser.parse_args(["--model", NEW_MODEL, "--dataset", "kafka", "--out", str(root),
                                  "--epochs", str(epochs), "--hidden", hidden, "--threads", "1",
                                  "--labels", labels, "--refit" if refit else "--no-refit",
                                  "--artifacts", tmp, "--report", f"{tmp}/r.json"])
        report = run(settings, args, lambda _log: data,
                     log=lambda m: print(f"[retrain] {m}", file=sys.stderr, flush=True))
    trained = report["models"][NEW_MODEL]
    new_version = str(trained.get("registry", {}).get("version") or reg.versions(name)[-1])
    new = load_ranker(reg.path(name, new_version), threads=1)
    new_probs = new.predict_arrays(test.sparse, test.dense)
    new_side = scored(settings, new_probs, test.dense, examination(new, test.position))
    cur, served_note = served_ranker(current)
    if cur is not None:
        cur_side = scored(settings, cur.predict_arrays(test.sparse, test.dense), test.dense,
                          examination(cur, test.position))
    else:  # the scorer serves the heuristic, which must be beaten too
        cur_side = scored(settings, heuristic_predictions(test.dense), test.dense)
    observable, observable_note = purchase_observable(data, test, window_ms)
    rank_rows, rank_note = ranked_slates(test, test_logged)
    gate = P.decide(policy, test.labels, test.request, test.position, new_side, cur_side, observable,
                    rank_rows)
    gate["ranked_slates"] = rank_note
    promote = bool(gate.pop("promote"))
    now = time.time()
    decision = {
        "action": "promoted" if promote else "kept", "reason": gate.pop("reason"), "model": name,
        "new_version": new_version, "new_checkpoint": trained.get("version"),
        "current_version": current.version if cur is not None and current else "heuristic-v1",
        "served_note": served_note, **gate,
        "purchase_ece": observable_note,
        "off_policy": explored_click_rate(test, test_logged, new_probs[:, 0], settings.explore_epsilon,
                                          policy.n_boot, policy.seed),
        "slice": {"rows": len(test), "requests": int(np.unique(test.request).size),
                  "from_ms": int(test.times.min()), "to_ms": int(test.times.max())},
        "training": {"examples": len(records), "store": synced.as_dict(), "rows": len(data),
                     "train_rows": int(tr.size + (va.size if trained.get("refit") else 0)),
                     "refit": trained.get("refit") and {k: v for k, v in trained["refit"].items()
                                                        if k != "history"},
                     "dropped": dropped, "labels": labels, "labels_why": labels_why,
                     "position_debias": bool((trained.get("position_debias") or {}).get("enabled"))},
        "decided_at": now, "decided_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    decision = P.json_safe(decision)
    reg.record_decision(name, decision)
    if promote:
        reg.promote(name, new_version)
    return decision


def policy_from(args: argparse.Namespace) -> PromotionPolicy:
    from models.promotion import PromotionPolicy

    return PromotionPolicy(k=args.ndcg_k, max_ece=args.max_ece, min_gain=args.min_gain,
                           require_ci=args.require_ci, min_requests=args.min_slates)


def guarded(round_fn: Any, *args: Any) -> dict[str, Any]:
    """A round's decision, or {"action": "error"} (a failed round must not end the loop)."""
    try:
        out: dict[str, Any] = round_fn(*args)
    except Exception as exc:  # noqa: BLE001 - a failed round must not end the loop
        out = {"action": "error", "reason": f"{type(exc).__name__}: {exc}"}
    return out


def tower_round(settings: Settings) -> dict[str, Any]:
    from models.tower_retrain import tower_round as run_round

    return run_round(settings, log=lambda m: print(f"[retrain two_tower] {m}", file=sys.stderr, flush=True))


def next_wait(every: float, elapsed: float, action: str) -> float:
    """Seconds until the next round (module doc, schedule)."""
    if action == "skip":
        return min(every, RETRY_AFTER_SKIP_S)
    return max(every - elapsed, every * MIN_REST)


def lower_priority(nice: int, idle: bool) -> str:
    """Put this process (and the threads it starts later) behind the serving processes:
    SCHED_IDLE where asked and available, else ``nice``; what applied, for the log."""
    if idle and hasattr(os, "sched_setscheduler") and hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:  # e.g. a seccomp profile that forbids it: nice still works
            pass
    if nice > 0:
        os.nice(nice)
        return f"nice +{nice}"
    return "unchanged"


def timed(label: str, round_fn: Any, *args: Any) -> dict[str, Any]:
    """Run one guarded round, print its decision and duration as one JSON line; the decision."""
    t0 = time.monotonic()
    out = guarded(round_fn, *args)
    print(json.dumps({label: out, "seconds": round(time.monotonic() - t0, 1)}, default=str), flush=True)
    return out


def run(settings: Settings, args: argparse.Namespace) -> int:
    min_examples = settings.retrain_min_examples if args.min_examples is None else args.min_examples
    policy = policy_from(args)
    print(json.dumps({"cpu_priority": lower_priority(args.nice, args.idle)}), flush=True)
    stop = stop_on_signals()
    if args.only == "tower":
        every = settings.tower_retrain_interval_s if args.every is None else args.every
    else:
        every = settings.retrain_interval_s if args.every is None else args.every
    n = 0
    while True:
        t0 = time.monotonic()
        if args.only == "tower":
            out = timed("retrain_two_tower", tower_round, settings)
        else:
            out = timed("retrain", round_once, settings, args.epochs, min_examples, policy, args.hidden,
                        args.refit)
        failed = out["action"] == "error"
        if args.only is None and out["action"] != "skip":
            n += 1
            if args.tower_every > 0 and n % args.tower_every == 0:  # not the first: no sessions yet
                failed = timed("retrain_two_tower", tower_round, settings)["action"] == "error" or failed
        if every <= 0 or stop.wait(next_wait(every, time.monotonic() - t0, out["action"])):
            return 1 if failed else 0
