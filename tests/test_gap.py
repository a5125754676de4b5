"""The gap analysis' pricing (``sim.gap``): each stage's list priced by a known truth."""

from __future__ import annotations

import numpy as np
import pytest

from sim.gap import GapStats, Priced, best_clicks, list_clicks, price_request


def examine(pos: int) -> float:
    return 1.0 / (1 + pos)


P0 = np.array([0.10, 0.50, 0.20, 0.40, 0.05, 0.30])
ROW = {f"i{j}": j for j in range(len(P0))}


def test_each_stage_is_priced_by_the_truth_at_its_slots():
    cands = [("i0", ["popular"], 2), ("i1", ["covisit", "popular"], 3), ("i2", ["covisit"], 0),
             ("i3", ["trending"], 1), ("unknown", ["popular"], 4)]
    priced = price_request(P0, ROW.get, cands, served=["i2", "i0"], n=2, examine=examine)
    assert priced.stages["retrieval_ceiling"] == pytest.approx(0.50 + 0.40 / 2)  # i1 then i3
    assert priced.stages["ranker_top_k"] == pytest.approx(0.20 + 0.40 / 2)  # ranks 0, 1: i2 then i3
    assert priced.stages["served"] == pytest.approx(0.20 + 0.10 / 2)
    assert priced.by_source == pytest.approx({"popular": 0.50 + 0.10 / 2, "covisit": 0.50 + 0.20 / 2,
                                                 "trending": 0.40})


def test_the_ceiling_bounds_every_ordering_of_the_same_candidates():
    rng = np.random.default_rng(3)
    for _ in range(200):
        p0 = rng.random(30)
        rows = rng.choice(30, size=12, replace=False).tolist()
        n = int(rng.integers(1, 10))
        best = best_clicks(p0, rows, n, examine)
        for _ in range(5):
            assert list_clicks(p0, rng.permutation(rows)[:n].tolist(), examine) <= best + 1e-12


def test_report_gives_fractions_of_the_oracle_over_the_same_requests():
    g = GapStats()
    g.add(Priced({"retrieval_ceiling": 0.6, "ranker_top_k": 0.4, "served": 0.3}, {"popular": 0.5}),
          oracle=1.2, slots=10)
    g.add(Priced({"retrieval_ceiling": 0.2, "ranker_top_k": 0.2, "served": 0.1}, {"covisit": 0.2}),
          oracle=0.4, slots=10)
    r = g.report()
    assert r["requests"] == 2 and r["slots"] == 20 and r["oracle_ctr"] == pytest.approx(1.6 / 20)
    assert r["oracle_fraction"] == pytest.approx({"retrieval_ceiling": 0.5, "ranker_top_k": 0.375,
                                                  "served": 0.25})
    assert r["ctr"]["served"] == pytest.approx(0.4 / 20)
    assert r["retrieval_ceiling_by_source"]["popular"]["oracle_fraction"] == pytest.approx(0.5 / 1.6)
