"""The learning curve and the new-item books of the simulator (sim/stats.py, sim/curve.py).

Synthetic lists with known counts go into ``Stats`` directly, and the per-hour CTRs, the
user-clustered CIs and the model / oracle and model / popular ratios are recomputed here from
the raw counts; a short seeded shop run on a ``VirtualClock`` checks what the shop records
(hour index, warm-up flag, items younger than one sim hour) against a recount of what the
recommender served and the clicks the shop emitted; the files ``recsys up`` writes are checked
on disk.
"""

from __future__ import annotations

import json
import math
import threading
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

from proto import events_pb2
from recsys.cli.up import _report, write_curve
from sim.clock import VirtualClock
from sim.config import WorldConfig
from sim.shop import Served, Shop
from sim.stats import ArmStats, Stats
from sim.world import HOUR_MS, User, World

T0 = 1_700_000_000_000
Z = 1.959964


def clustered(counts: list[tuple[int, int]]) -> tuple[float, float]:
    """CTR and its user-clustered SE from per-user (impressions, clicks), written out here."""
    n = np.array([c[0] for c in counts], float)
    k = np.array([c[1] for c in counts], float)
    ctr = k.sum() / n.sum()
    g = len(counts)
    return ctr, math.sqrt(((k - ctr * n) ** 2).sum() * g / (g - 1)) / n.sum()


def synthetic() -> tuple[Stats, dict[tuple[str, int], list[tuple[int, int]]]]:
    """Three arms, four sim hours (hour 0 is warm-up), 40 users per arm and hour, seeded."""
    rng = np.random.default_rng(7)
    p = {"model": [0.02, 0.04, 0.06, 0.08], "popular": [0.05] * 4, "oracle": [0.10] * 4}
    st = Stats()
    raw: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for arm, rates in p.items():
        for h, rate in enumerate(rates):
            rows = raw.setdefault((arm, h), [])
            for u in range(40):
                n = int(rng.integers(5, 30))
                k = int(rng.binomial(n, rate))
                # a user's impressions in an hour arrive as two lists
                st.hour(arm, h, f"{arm}-u{u}", n // 2, k // 2, 0.5 * n * rate, warmup=h == 0)
                st.hour(arm, h, f"{arm}-u{u}", n - n // 2, k - k // 2, 0.5 * n * rate, warmup=h == 0)
                rows.append((n, k))
    return st, raw


def test_learning_curve_per_hour_ctrs_and_ratios():
    st, raw = synthetic()
    curve = st.report()["learning_curve"]
    assert curve["arm"] == "model" and curve["baselines"] == ["oracle", "popular"]
    assert [r["hour"] for r in curve["hours"]] == [0, 1, 2, 3]
    assert [r["warmup"] for r in curve["hours"]] == [True, False, False, False]
    assert curve["hours"][0]["warmup_share"] == 1.0 and curve["hours"][1]["warmup_share"] == 0.0
    for row in curve["hours"]:
        h = row["hour"]
        for arm in ("model", "popular", "oracle"):
            ctr, se = clustered(raw[(arm, h)])
            got = row["arms"][arm]
            assert got["impressions"] == sum(n for n, _ in raw[(arm, h)])
            assert got["clicks"] == sum(k for _, k in raw[(arm, h)]) and got["users"] == 40
            assert got["ctr"] == pytest.approx(ctr)
            assert got["ctr_ci95"] == pytest.approx([max(0.0, ctr - Z * se), ctr + Z * se])
        m_ctr, m_se = clustered(raw[("model", h)])
        for base in ("oracle", "popular"):
            b_ctr, b_se = clustered(raw[(base, h)])
            ratio = m_ctr / b_ctr
            se_log = math.sqrt((m_se / m_ctr) ** 2 + (b_se / b_ctr) ** 2)
            cmp = row[f"model_vs_{base}"]
            assert cmp["ctr_ratio"] == pytest.approx(ratio)
            assert cmp["ctr_ratio_ci95"] == pytest.approx([ratio * math.exp(-Z * se_log),
                                                           ratio * math.exp(Z * se_log)])
    ratios = [r["model_vs_popular"]["ctr_ratio"] for r in curve["hours"]]
    assert ratios[0] < 1 < ratios[-1]  # the model arm learns: 0.02 -> 0.08 against 0.05
    # the arms themselves are empty (all of this went through the hourly books only)
    assert st.report()["arms"] == {}


def test_arm_report_has_its_hours_and_a_zero_hour_has_no_ratio():
    st = Stats()
    st.arm("model").impressions = 10
    st.hour("model", 0, "u1", 10, 0, 0.3, warmup=False)
    st.hour("oracle", 0, "u2", 10, 2, 1.0, warmup=False)
    st.hour("model", 5, "u1", 4, 1, 0.2, warmup=False)  # an hour the oracle has no list in
    rep = st.report()
    hourly = rep["arms"]["model"]["hourly"]
    assert [h["hour"] for h in hourly] == [0, 5] and hourly[1]["ctr"] == 0.25
    assert hourly[0]["ctr_expected"] == pytest.approx(0.03)
    rows = rep["learning_curve"]["hours"]
    assert rows[0]["model_vs_oracle"] == {}  # the model's CTR is 0 in hour 0: no log ratio
    assert "model_vs_oracle" not in rows[1] and "model_vs_popular" not in rows[0]


def test_new_item_share_from_known_ages():
    a, o = ArmStats(impressions=8), ArmStats(impressions=4)
    # ages in sim ms: 4 younger than an hour (0, HOUR_MS - 1, 10, 7; one clicked), 4 older
    hits = [False, True, True, False, False, True, True, False]
    a.add_new_items([0, HOUR_MS - 1, HOUR_MS, 5 * HOUR_MS, 10, 2 * HOUR_MS, T0, 7], list(enumerate(hits)))
    o.add_new_items([5, 6, HOUR_MS + 1, T0], [(0, True), (1, True), (2, False), (3, False)])
    st = Stats(arms={"model": a, "oracle": o})
    rep = st.report()["arms"]
    mine = rep["model"]["new_items"]
    assert mine["age_h_max"] == 1 and mine["impressions"] == 4 and mine["clicks"] == 1
    assert mine["share"] == pytest.approx(4 / 8) and mine["ctr"] == pytest.approx(1 / 4)
    theirs = rep["oracle"]["new_items"]
    assert theirs["impressions"] == 2 and theirs["share"] == pytest.approx(0.5) and theirs["ctr"] == 1.0
    assert mine["oracle"] == {"share": 0.5, "ctr": 1.0, "share_ratio": pytest.approx(1.0)}
    with pytest.raises(ValueError):  # ages and outcomes must pair up
        a.add_new_items([1, 2], [(0, True)])


def test_shop_records_hours_warmup_and_new_items():
    cfg = WorldConfig().with_(catalog={"n_items": 200, "n_categories": 8, "seed": 5},
                              users={"n_users": 300, "bot_share": 0.0},
                              behaviour={"landing_home": 0.9, "home_share": 0.6, "steps_mean": 2.0},
                              dynamics={"new_items_per_h": 30.0}, run={"warmup_s": 60.0})
    world = World(config=cfg)
    assert all(it.born_ms == 0 for it in world.items)  # the launch catalog is "old" at any sim time
    served: dict[str, tuple[int, list[str]]] = {}

    def rec(user: User, k: int, sim_ms: int) -> Served:
        """The 3 newest active items, then the most popular ones."""
        active = world.active_items()
        newest = sorted(active, key=lambda it: -it.born_ms)[:3]
        rest = [it for it in active if it not in newest][: k - len(newest)]
        rid = f"r{len(served)}"
        served[rid] = (sim_ms, [it.item_id for it in newest + rest])
        return Served(rid, served[rid][1], "model")

    clock = VirtualClock(T0, speed=60.0)  # warm-up 60 wall s = the first sim hour
    sink = SimpleNamespace(events=[], event=lambda u, v: sink.events.append(v),
                           catalog=lambda i, v: None, profile=lambda u, v: None)
    shop = Shop(world, cfg, sink, rec, clock, rate=6.0)
    shop.run(T0 + 3 * HOUR_MS, threading.Event())
    added = [it for it in world.items if it.born_ms]
    assert added and all(T0 <= it.born_ms < T0 + 3 * HOUR_MS for it in added)  # born at sim time
    clicked = {(ev.request_id, ev.item_id) for ev in map(events_pb2.Event.FromString, sink.events)
               if ev.type == events_pb2.CLICK and ev.request_id}
    # clicks drawn near the end are still on the heap (due after the end): the books count them
    clicked |= {(e[3], e[2].item_id) for _, _, kind, e in shop.heap
                if kind == "event" and e[1] == events_pb2.CLICK}
    per_hour: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    young = [0, 0]  # after the warm-up hour, as the arm counts
    for rid, (t, items) in served.items():
        h = (t - T0) // HOUR_MS
        hits = [(rid, i) in clicked for i in items]
        per_hour[h][0] += len(items)
        per_hour[h][1] += sum(hits)
        if t - T0 >= HOUR_MS:
            for i, hit in zip(items, hits, strict=True):
                if t - world.index[i].born_ms < HOUR_MS:
                    young[0] += 1
                    young[1] += hit
    rep = shop.stats.report()
    rows = {r["hour"]: r for r in rep["learning_curve"]["hours"]}
    assert sorted(rows) == [0, 1, 2] == sorted(per_hour)
    assert rows[0]["warmup"] and not any(rows[h]["warmup"] for h in (1, 2))
    for h, (n, k) in per_hour.items():
        assert (rows[h]["arms"]["model"]["impressions"], rows[h]["arms"]["model"]["clicks"]) == (n, k)
    model = rep["arms"]["model"]
    assert model["impressions"] == sum(per_hour[h][0] for h in (1, 2))  # warm-up excluded
    got = model["new_items"]
    assert (got["impressions"], got["clicks"]) == tuple(young) and young[0] > 0
    assert got["share"] == pytest.approx(young[0] / model["impressions"])
    assert got["oracle"]["share"] == rep["arms"]["oracle"]["new_items"]["share"]
    assert "model_vs_oracle" in rows[2] and "model_vs_popular" not in rows[2]


def test_up_report_copies_the_curve_and_writes_json_and_png(tmp_path):
    st, _ = synthetic()
    sim_report = {**st.report(), "sim_hours": 4.0}
    state = tmp_path / "state"
    state.mkdir()
    (state / "sim-report.json").write_text(json.dumps(sim_report))
    status = SimpleNamespace(totals=lambda: {}, max_lag=0.0)
    report = _report(state, status, SimpleNamespace(restarts=0))  # type: ignore[arg-type]
    assert report["learning_curve"] == sim_report["learning_curve"]
    out = tmp_path / "reports"
    paths = write_curve(report, out)
    assert [p.name for p in paths] == ["learning_curve.json", "learning_curve.png"]
    assert json.loads((out / "learning_curve.json").read_text()) == report["learning_curve"]
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert write_curve({"learning_curve": {"hours": []}}, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()
