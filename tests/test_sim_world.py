"""The simulated shop without infrastructure: seeded world, hidden truth, behaviour, clock, books.

The loop runs on a ``VirtualClock`` (discrete-event time) against in-test recommenders that
stand in for the frontend's Recommend call; the real scorer is in tests/test_sim_loop.py.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from proto import events_pb2
from sim.clock import SimClock, VirtualClock, plan_start, skew_horizon_s
from sim.config import WorldConfig, WorldConfigError, load_config
from sim.shop import Served, Shop, in_oracle
from sim.stats import ArmStats, cluster_se, compare, wilson
from sim.world import HOUR_MS, User, World

T0 = 1_700_000_000_000
SMALL = WorldConfig().with_(catalog={"n_items": 300, "n_categories": 10, "seed": 11},
                          users={"n_users": 400}, run={"warmup_s": 0.0})


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.catalog_msgs: list[events_pb2.ItemUpsert] = []

    def event(self, user_id: str, value: bytes) -> None:
        self.events.append((user_id, value))

    def catalog(self, item_id: str, value: bytes) -> None:
        self.catalog_msgs.append(events_pb2.ItemUpsert.FromString(value))

    def profile(self, user_id: str, value: bytes) -> None:
        pass

    def decoded(self) -> list[events_pb2.Event]:
        return [events_pb2.Event.FromString(v) for _, v in self.events]


def popular_recommender(world: World):
    """Deterministic stand-in: the k most popular active items, as a shared list."""
    def rec(user: User, k: int, sim_ms: int) -> Served:
        a, n = world._cols()
        order = np.argsort(-np.where(a.active[:n], a.logpop[:n], -np.inf), kind="stable")[:k]
        return Served(f"r{user.user_id}-{sim_ms}", [world.items[int(j)].item_id for j in order], "model")
    return rec


def shuffled_best_recommender(world: World):
    """The user's true top-k in a random order: position independent of the item's appeal."""
    def rec(user: User, k: int, sim_ms: int) -> Served:
        items, _ = world.oracle(user, k, sim_ms)
        rng = np.random.default_rng([user.idx, sim_ms])
        order = rng.permutation(len(items))
        return Served(f"r{user.user_id}-{sim_ms}", [items[int(j)].item_id for j in order], "model")
    return rec


def run_shop(cfg: WorldConfig, hours: float, rate: float = 20.0, speed: float = 60.0, rec=None
             ) -> tuple[Shop, ListSink]:
    world = World(config=cfg)
    sink = ListSink()
    clock = VirtualClock(T0, speed=speed)
    shop = Shop(world, cfg, sink, rec or popular_recommender(world), clock, rate)
    shop.run(T0 + hours * HOUR_MS, threading.Event())
    return shop, sink


def test_world_is_seeded_and_reproducible():
    a, b, c = World(config=SMALL), World(config=SMALL), World(config=SMALL.with_(catalog={"seed": 12}))
    assert [(i.item_id, i.category, i.brand, i.price, i.quality) for i in a.items] == \
           [(i.item_id, i.category, i.brand, i.price, i.quality) for i in b.items]
    assert all(np.array_equal(u.pref, v.pref) and u.brands == v.brands
               for u, v in zip(a.users, b.users, strict=True))
    assert [i.price for i in a.items] != [i.price for i in c.items]
    u = a.users[0]
    assert np.allclose(a.p_click_all(u), b.p_click_all(b.users[0]))
    # the legacy signature (models/ranking_dataset.py) still builds the same shop
    legacy = World(seed=11, n_users=400, n_items=300, n_categories=10)
    assert [i.price for i in legacy.items] == [i.price for i in a.items]


def test_same_seed_gives_the_same_event_sequence():
    _, s1 = run_shop(SMALL, hours=1.0)
    _, s2 = run_shop(SMALL, hours=1.0)
    _, s3 = run_shop(SMALL.with_(catalog={"seed": 12}), hours=1.0)
    assert len(s1.events) > 500
    assert s1.events == s2.events  # byte for byte: ids, times, users, items, positions
    assert [m.SerializeToString() for m in s1.catalog_msgs] == \
           [m.SerializeToString() for m in s2.catalog_msgs]
    assert s1.events != s3.events
    last: dict[str, int] = {}
    for ev in s1.decoded():  # event time = sim time, in order for every user
        assert T0 <= ev.event_time_ms <= T0 + HOUR_MS
        assert ev.event_time_ms >= last.get(ev.user_id, 0)
        last[ev.user_id] = ev.event_time_ms


def test_purchases_are_delayed_by_the_configured_distribution():
    cfg = SMALL.with_(truth={"purchase_rate": 1.0, "organic_cart_rate": 0.5, "purchase_delay_median_h": 6.0,
                             "purchase_delay_sigma": 1.2},
                      dynamics={"retire_items_per_h": 0.0, "new_items_per_h": 0.0, "new_users_per_h": 0.0,
                                "price_changes_per_h": 0.0})
    days = 10
    shop, sink = run_shop(cfg, hours=24 * days, rate=0.1)
    carts: dict[tuple[str, str, str], int] = {}
    delays, early_carts = [], 0
    horizon = T0 + (days - 5) * 24 * HOUR_MS  # carts before this: their purchase is (almost) never censored
    for ev in sink.decoded():
        key = (ev.user_id, ev.item_id, ev.request_id)
        if ev.type == events_pb2.ADD_TO_CART:
            carts[key] = ev.event_time_ms
            early_carts += ev.event_time_ms < horizon
        elif ev.type == events_pb2.PURCHASE:
            assert key in carts and ev.event_time_ms > carts[key]
            if carts[key] < horizon:
                delays.append((ev.event_time_ms - carts[key]) / HOUR_MS)
    assert len(delays) > 150
    assert len(delays) >= 0.97 * early_carts  # purchase_rate 1: nearly every early cart was bought
    logs = np.log(delays)
    assert abs(float(np.median(logs)) - math.log(6.0)) < 0.25
    assert abs(float(np.std(logs)) - 1.2) < 0.15
    assert shop.pending_purchases > 0  # the last days' purchases are still due (hours to days)


def test_position_bias_lowers_ctr_with_position():
    world = World(config=SMALL)
    u = world.users[1]
    item = world.items[0]
    ps = [world.p_click(u, item, pos) for pos in range(10)]
    assert all(a > b for a, b in itertools.pairwise(ps))
    shop, sink = run_shop(SMALL.with_(users={"bot_share": 0.0}, run={"oracle_share": 0.0}), hours=3.0,
                          rec=shuffled_best_recommender(world))
    clicks = Counter(ev.position for ev in sink.decoded() if ev.type == events_pb2.CLICK)
    shown = shop.stats.arms["model"].requests  # every list has 10 items
    top, bottom = (clicks[0] + clicks[1]) / (2 * shown), (clicks[8] + clicks[9]) / (2 * shown)
    assert shown > 1000
    assert top > 2.0 * bottom  # expected ratio 1/log2(2.5) / (1/log2(10.5)) ~ 2.6


def test_bots_are_high_rate_noise_flagged_only_in_the_books():
    cfg = SMALL.with_(users={"bot_share": 0.05})
    shop, sink = run_shop(cfg, hours=2.0)
    bots = {u.user_id for u in shop.w.users if u.bot}
    per_user: dict[str, int] = defaultdict(int)
    cats: dict[bool, Counter[int]] = {True: Counter(), False: Counter()}
    for ev in sink.decoded():
        per_user[ev.user_id] += 1
        if ev.type == events_pb2.VIEW:
            cats[ev.user_id in bots][shop.w.index[ev.item_id].category] += 1
    bot_rate = np.mean([per_user[u] for u in bots if u in per_user])
    human_rate = np.mean([n for u, n in per_user.items() if u not in bots])
    assert bot_rate > 5 * human_rate
    assert shop.stats.bot_events == sum(per_user[u] for u in bots)
    fields = {True: set(), False: set()}  # nothing in an event says "bot"
    for ev in sink.decoded():
        fields[ev.user_id in bots] |= {f.name for f, _ in ev.ListFields()}
    assert fields[True] <= fields[False]
    assert shop.stats.bot_requests > 0
    # bots click regardless of what is shown: their CTR is ~ bot_click_rate
    assert shop.stats.bot_clicks / (10 * shop.stats.bot_requests) == pytest.approx(0.3, abs=0.08)


def test_drift_moves_a_users_taste_over_sim_time():
    cfg = SMALL.with_(users={"drift_share": 1.0, "bot_share": 0.0, "drift_start_max_h": 0.0,
                             "drift_span_h": 10.0})
    world = World(config=cfg)
    world.epoch_ms = T0
    u = max(world.users, key=lambda x: float(np.abs(x.pref - x.drift_to).sum()))
    assert np.allclose(world.pref_at(u, T0), u.pref)
    assert np.allclose(world.pref_at(u, T0 + 20 * HOUR_MS), u.drift_to)
    rng = np.random.default_rng(0)

    def cat_hist(t_ms: int) -> np.ndarray:
        h = np.bincount([it.category for it in world.browse(u, 600, rng, t_ms)], minlength=10)
        return h / h.sum()

    early, late = cat_hist(T0), cat_hist(T0 + 12 * HOUR_MS)
    assert 0.5 * np.abs(early - late).sum() > 0.3  # total variation between the two tastes
    new_fav = int(np.argmax(u.drift_to - u.pref))
    items = [it for it in world.items if it.category == new_fav]
    assert np.mean([world.p_click(u, it, 0, T0 + 12 * HOUR_MS) for it in items]) > \
           np.mean([world.p_click(u, it, 0, T0) for it in items])
    still = next(x for x in World(config=SMALL).users if x.drift_to is None)
    assert np.allclose(world.pref_at(still, T0 + 12 * HOUR_MS), still.pref)


def test_catalog_changes_are_published_and_respected():
    cfg = SMALL.with_(dynamics={"new_items_per_h": 30.0, "retire_items_per_h": 30.0,
                                "price_changes_per_h": 30.0})
    shop, sink = run_shop(cfg, hours=2.0)
    st = shop.stats
    assert st.new_items > 20 and st.retired_items > 20 and st.price_changes > 20
    assert len(sink.catalog_msgs) == st.new_items + st.retired_items + st.price_changes
    retired_at = {m.item_id: m.updated_ms for m in sink.catalog_msgs if not m.active}
    new_ids = {m.item_id for m in sink.catalog_msgs if int(m.item_id[1:]) >= 300}
    assert len(new_ids) == st.new_items
    views = [ev for ev in sink.decoded() if ev.type == events_pb2.VIEW]
    assert not [ev for ev in views if ev.item_id in retired_at and ev.event_time_ms > retired_at[ev.item_id]]
    assert {ev.item_id for ev in views} & new_ids  # cold-start items get traffic
    assert all(shop.w.index[m.item_id].price > 0 for m in sink.catalog_msgs)


def test_daily_cycle_and_oracle_arm():
    shop, sink = run_shop(SMALL.with_(users={"bot_share": 0.0}), hours=24.0, rate=2.0)
    assert shop.diurnal(20 * HOUR_MS) == pytest.approx(1.5)
    assert shop.diurnal(8 * HOUR_MS) == pytest.approx(0.5)
    hours = Counter(ev.event_time_ms // HOUR_MS % 24 for ev in sink.decoded())
    peak, trough = sum(hours[h] for h in (18, 19, 20, 21, 22)), sum(hours[h] for h in (6, 7, 8, 9, 10))
    assert peak > 1.6 * trough  # activity follows the hour of day (expected ratio ~2.6 for arrivals)
    oracle = shop.stats.arms["oracle"]
    model = shop.stats.arms["model"]
    assert oracle.best_clicks == pytest.approx(oracle.expected_clicks)  # the oracle IS the best list
    assert oracle.ctr > model.ctr and model.expected_clicks < model.best_clicks
    u = shop.w.users[3]
    capped, pc = shop.w.oracle(u, 10, max_per_category=3)  # the diagnostic best_ctr_capped list
    assert len(capped) == 10 and max(Counter(it.category for it in capped).values()) <= 3
    _, full = shop.w.oracle(u, 10)
    assert pc.sum() <= full.sum() + 1e-12 and np.all(np.diff(pc) <= 0) and np.all(np.diff(full) <= 0)
    share = np.mean([in_oracle(f"u{j}", 11, 0.1) for j in range(5000)])
    assert share == pytest.approx(0.1, abs=0.015)
    rep = shop.stats.report()
    assert {"impressions", "ctr", "ctr_ci95", "cart_rate", "cvr", "revenue_per_mille", "best_ctr"} <= \
           set(rep["arms"]["model"])
    assert "model_vs_oracle" in rep["comparisons"]


def test_config_file_and_errors(tmp_path):
    p = tmp_path / "world.toml"
    p.write_text("[run]\nspeed = 10\nwarmup_s = 5\n[truth]\nw_latent = 1.5\n")
    cfg = load_config(None, p)
    assert cfg.run.speed == 10.0 and cfg.run.warmup_s == 5.0 and cfg.truth.w_latent == 1.5
    p2 = tmp_path / "round.toml"
    p2.write_text(cfg.to_toml())
    assert load_config(None, p2) == cfg
    for text, fragment in (("[run]\nspeeed = 1\n", "unknown key run.speeed"),
                           ("[moon]\nx = 1\n", "unknown section"),
                           ("[users]\nbot_share = 2\n", "must be in [0, 1]"),
                           ("[catalog]\nn_items = 1.5\n", "expected an integer")):
        p.write_text(text)
        with pytest.raises(WorldConfigError, match=fragment.replace("[", r"\[")):
            load_config(None, p)


def test_clocks():
    clock = SimClock(speed=100.0)
    t0 = clock.now_ms()
    assert clock.wait_until(t0 + 5_000, threading.Event(), max_wall_s=1.0)
    assert 5_000 <= clock.now_ms() - t0 < 25_000  # 0.05 wall seconds at 100x
    v = VirtualClock(T0, speed=60)
    v.wait_until(T0 + 60_000, threading.Event())
    assert v.now_ms() == T0 + 60_000 and v.wall_elapsed_s() == pytest.approx(1.0)
    now = int(time.time() * 1000)
    assert plan_start(240, 60, now) == now - 240 * 60 * 1000  # ends at wall "now"
    assert plan_start(0, 60, now) == now
    assert plan_start(240, 1, now) == now  # real time: sim time is wall time
    assert skew_horizon_s(60, now, 3 * 86400, now) == pytest.approx(3 * 86400 / 59)


def test_timed_run_covers_the_same_hours_whatever_its_start():
    day, hour = 86_400_000, 3_600_000
    midnight = 1_796_256_000_000  # 2026-12-03 00:00 UTC
    assert midnight % day == 0
    ends = []
    for started in (midnight + 7 * hour + 123, midnight + 21 * hour, midnight + 23 * hour + 5):
        start = plan_start(600, 60, started, end_hour_utc=22.0)
        end = start + 600 * 60 * 1000
        assert end <= started and started - end < day  # never in the future, at most a day back
        ends.append(end % day)
    assert ends == [22 * hour] * 3  # the same sim time of day, so the same diurnal rates
    assert plan_start(600, 60, midnight + 22 * hour, end_hour_utc=22.0) == midnight + 22 * hour - 600 * 60_000


def test_confidence_intervals():
    lo, hi = wilson(30, 1000)
    assert lo < 0.03 < hi and hi - lo < 0.025
    assert wilson(0, 0) == [0.0, 0.0]
    iid = {f"u{j}": [10, 1] for j in range(100)}
    assert cluster_se(iid, 0.1) == 0.0  # every user exactly at the mean
    lumpy = {f"u{j}": [10, 10 if j < 10 else 0] for j in range(100)}
    assert cluster_se(lumpy, 0.1) > math.sqrt(0.1 * 0.9 / 1000)  # clustered clicks: wider
    a = ArmStats(impressions=1000, clicks=60, per_user={f"u{j}": [10, 10 * (j < 6)] for j in range(100)})
    b = ArmStats(impressions=1000, clicks=30, per_user={f"u{j}": [10, 10 * (j < 3)] for j in range(100)})
    c = compare(a, b)
    assert c["ctr_diff"] == pytest.approx(0.03) and c["ctr_ratio"] == pytest.approx(2.0)
    assert c["ctr_diff_ci95"][0] < 0.03 < c["ctr_diff_ci95"][1]
