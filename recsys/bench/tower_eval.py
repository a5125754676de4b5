"""How much of the promoted two-tower's accuracy survives the scorer's ANN path.

    python -m recsys.bench.tower_eval --dataset ../shared/data/yoochoose_1_64 --registry DIR [--report PATH]

On the dataset's test prefixes (SR-GNN protocol), the promoted ``two_tower`` version is scored
twice:

* ``exact``: as training evaluates it (``models.train_two_tower.rank_labels``): the whole
  prefix (up to the model's ``max_len`` items), every item scored;
* ``serving``: as the scorer queries it (``online.tower``): the last ``--session`` items only
  (the live session keeps ``last_n_viewed``), item ids through the version's ``item_ids.json``,
  the traced session tower, the HNSW index of the vocabulary, top 20; once with the session's
  items excluded, as the scorer does (it does not re-show what was just viewed), once without.

Prints and writes P@20 / MRR@20 of each, the share of labels that are among the session's
items, and the serving path's time per query (session tower, HNSW search).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.reports import write_json
from core.settings import load_settings
from models.registry import TWO_TOWER, ModelRegistry, default_root
from models.session_data import dataset_files, pad_prefixes, read_test
from models.train_two_tower import rank_labels, summarize
from online.tower import Tower, TowerHolder

K = 20


def serving_ranks(tower: Tower, prefixes: list[np.ndarray], labels: np.ndarray, session: int,
                  exclude: bool) -> tuple[np.ndarray, list[float], list[float]]:
    """1-based rank of each label in the serving path's top K (K + 1: not in it), and the
    seconds each query spent in the session tower and in the HNSW search."""
    index = tower.index()
    assert index is not None
    ranks = np.full(len(labels), K + 1, dtype=np.int64)
    t_vec: list[float] = []
    t_ann: list[float] = []
    for j, (prefix, label) in enumerate(zip(prefixes, labels.tolist(), strict=True)):
        recent = [str(i) for i in prefix[::-1][:session].tolist()]  # most recent first
        t0 = time.perf_counter()
        vec = tower.user_vector(recent)
        t1 = time.perf_counter()
        if vec is None:
            continue
        got = index.query(vec, K, exclude=set(recent) if exclude else None)
        t_vec.append(t1 - t0)
        t_ann.append(time.perf_counter() - t1)
        ids = [i for i, _ in got]
        if str(label) in ids:
            ranks[j] = ids.index(str(label)) + 1
    return ranks, t_vec, t_ann


def evaluate(dataset: str | Path, registry: str | Path, session: int, limit: int | None = None,
             log: Any = print) -> dict[str, Any]:
    mv = ModelRegistry(registry).current(TWO_TOWER)
    if mv is None:
        raise SystemExit(f"no promoted {TWO_TOWER} under {registry}")
    t0 = time.perf_counter()
    tower = TowerHolder(load_settings(), registry_root=Path(registry)).load(mv)
    load_s = time.perf_counter() - t0
    log(f"{TWO_TOWER} {mv.version}: {len(tower.vocab)} items, index built in {load_s:.1f} s")
    prefixes, labels = read_test(dataset_files(dataset)[1])
    if limit:
        prefixes, labels = prefixes[:limit], labels[:limit]
    import torch

    from models.two_tower import TwoTower

    model = TwoTower.load(mv.model_file)
    exact = summarize(rank_labels(model, pad_prefixes(prefixes, model.config.max_len), labels,
                                  torch.device("cpu")))
    in_session = np.mean([int(lab) in p[::-1][:session].tolist()
                          for p, lab in zip(prefixes, labels.tolist(), strict=True)])
    out: dict[str, Any] = {
        "dataset": str(dataset), "version": mv.version, "test_cases": len(labels),
        "session_items": session, "vocabulary": len(tower.vocab), "index_build_s": round(load_s, 1),
        "exact": {"p_at_20": round(100 * exact["hit_rate_at_20"], 2),
                  "mrr_at_20": round(100 * exact["mrr_at_20"], 2)},
        "label_in_session": round(float(in_session), 4),
    }
    for name, excl in (("serving", True), ("serving_no_exclusion", False)):
        ranks, t_vec, t_ann = serving_ranks(tower, prefixes, labels, session, excl)
        s = summarize(ranks)
        out[name] = {"p_at_20": round(100 * s["hit_rate_at_20"], 2),
                     "mrr_at_20": round(100 * s["mrr_at_20"], 2),
                     "session_tower_us_p50": round(1e6 * float(np.median(t_vec)), 1),
                     "hnsw_us_p50": round(1e6 * float(np.median(t_ann)), 1)}
        log(f"{name}: {out[name]}")
    log(f"exact: {out['exact']}; labels among the last {session} items: {in_session:.1%}")
    tower.close()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys.bench.tower_eval", description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, help="SR-GNN-format folder (test_prefix_label.tsv.gz)")
    p.add_argument("--registry", default=None, help="model registry (default: STATE_DIR/models)")
    p.add_argument("--session", type=int, default=None, help="session items (default: last_n_viewed)")
    p.add_argument("--limit", type=int, default=None, help="first N test cases only")
    p.add_argument("--report", type=Path, default=None)
    args = p.parse_args(argv)
    s = load_settings()
    out = evaluate(args.dataset, args.registry or default_root(s.state_dir),
                   args.session or s.last_n_viewed, args.limit,
                   log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.report:
        write_json(args.report, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
