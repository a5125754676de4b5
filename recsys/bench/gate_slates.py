"""Which slates should the promotion gate rank on? (the learning-loop issue, sixth round)

    python -m recsys.bench.gate_slates STATE_DIR [--report reports/gate_slates.json]

Reads what a finished ``recsys --set state_dir=STATE_DIR --set ab_arms=model,popular,random up``
left behind: the retrain's example store and every ranker it registered, promoted or not. For
each version, against the cold-start heuristic, the gate's own measure (the position-debiased
NDCG@10 of ``models.promotion.paired_ndcg``: each logged slate re-ranked by the scorer's value,
graded click / cart / purchase, labels weighted by 1 / examine(position) of the version's
learned curve) on two sets of rows:

* ``slice``: the newest slice the retrain gated that version on (its decision's ``slice``);
* ``later``: every row logged after that slice (rows the version never saw; under A/B the
  model arm's later slates were served by whatever was promoted then);

each split by the arm that served the slate: ``ranked`` (arms a ranker ordered: model,
heuristic), ``popular+random`` (the gate's choice before the sixth round) and ``all``.
A set of slates that tells the versions apart gives a bad first model (trained on a few
thousand rows) a clear loss and the later ones a clear gain, as the live CTR did once they were
promoted; one that does not shows ties.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from core.reports import write_json
from core.settings import Settings
from models import promotion as P
from models.example_store import ExampleStore
from models.ranker_runtime import load_ranker
from models.registry import ModelRegistry, default_root
from models.training_examples import load_logged_examples
from online.servicer import UNRANKED_ARMS
from recsys.cli.retrain import examination, heuristic_predictions, scored

SETS = ("ranked", "popular+random", "all")


def gains(data: Any, unranked: Any, rows: Any, new: Any, served: Any, weight: Any,
          n_boot: int) -> dict[str, Any]:
    """A version's NDCG@10 gain over the heuristic (values ``new`` / ``served``, label weights
    ``weight``) on ``rows``, per slate set."""
    out: dict[str, Any] = {}
    for name, sel in (("ranked", rows & ~unranked), ("popular+random", rows & unranked), ("all", rows)):
        r = P.paired_ndcg(new[sel], served[sel], data.labels[sel], data.request[sel], data.position[sel],
                          10, n_boot, 0, None if weight is None else weight[sel])
        out[name] = {"gain": r["gain"], "gain_ci95": r["gain_ci95"], "slates": r["requests_scored"]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.gate_slates", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("state_dir", help="the state_dir of a finished `recsys up` run")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--bootstrap", type=int, default=500)
    args = p.parse_args(argv)
    settings = Settings(state_dir=args.state_dir)
    data, logged = load_logged_examples(ExampleStore.for_settings(settings).records(), drop_fallback=True)
    if not len(data):
        raise SystemExit(f"no training examples under {args.state_dir}")
    reg = ModelRegistry(default_root(settings.state_dir))
    served = np.asarray(scored(settings, heuristic_predictions(data.dense), data.dense).value)
    unranked = np.isin(logged.arm, UNRANKED_ARMS)
    rows = []
    for d in reg.decisions(settings.ranker_model):
        if "slice" not in d:  # a round that failed before it trained
            continue
        model = load_ranker(reg.path(settings.ranker_model, d["new_version"]), threads=2)
        examine = examination(model, data.position)
        new = np.asarray(scored(settings, model.predict_arrays(data.sparse, data.dense), data.dense,
                                examine).value)
        weight = None if examine is None else P.ips_weight(examine)
        lo, hi = d["slice"]["from_ms"], d["slice"]["to_ms"]
        row = {"version": d["new_version"], "action": d["action"], "train_rows": d["training"]["rows"],
               **{when: gains(data, unranked, rows, new, served, weight, args.bootstrap)
                  for when, rows in (("slice", (data.times >= lo) & (data.times <= hi)),
                                     ("later", data.times > hi))}}
        rows.append(row)
        print(f"{row['version']} ({row['action']}, {row['train_rows']} rows)")
        for when in ("slice", "later"):
            print(f"  {when:6s}" + "".join(
                f"  {s} {row[when][s]['gain']:+.4f} [{row[when][s]['gain_ci95'][0]:+.4f}, "
                f"{row[when][s]['gain_ci95'][1]:+.4f}] n={row[when][s]['slates']}" for s in SETS))
    if args.report:
        write_json(args.report, {"state_dir": args.state_dir, "versions": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
