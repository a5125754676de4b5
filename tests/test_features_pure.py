"""Pure feature math: decay, sessions, user and item features."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features import decay as FD
from features import item_features as IF
from features import sessions as F
from features import user_features as UF

H = 3600.0
T0 = 1_750_000_000_000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30), st.randoms())
def test_forward_decay_is_order_independent_and_matches_direct_sum(offsets, rnd):
    times = [T0 + o for o in offsets]
    s1 = None
    for t in times:
        s1 = FD.decay_add(s1, t, H)
    shuffled = times[:]
    rnd.shuffle(shuffled)
    s2 = None
    for t in shuffled:
        s2 = FD.decay_add(s2, t, H)
    now = max(times)
    direct = sum(2 ** (-(now - t) / 1000 / H) for t in times)
    assert math.isclose(FD.decayed_value(s1, now, H), direct, rel_tol=1e-9)
    assert math.isclose(FD.decayed_value(s2, now, H), direct, rel_tol=1e-9)


def test_value_halves_after_one_half_life():
    s = FD.decay_add(None, T0, H, weight=8.0)
    assert math.isclose(FD.decayed_value(s, T0 + int(H * 1000), H), 4.0, rel_tol=1e-12)


def _apply(state, eid, t, item, etype="view", gap=1800.0):
    return F.update_session(state, event_id=eid, user_id="u", ts_ms=t, etype=etype, item_id=item,
                            gap_s=gap, last_n=5)


def test_session_last_five_gap_and_duplicates():
    st_ = None
    for i, item in enumerate("abcdefg"):
        st_ = _apply(st_, f"e{i}", T0 + i * 1000, item).state
    assert st_.last_viewed == ("g", "f", "e", "d", "c")
    dup = _apply(st_, "e3", T0 + 3000, "d")
    assert dup.duplicate and dup.state == st_
    later = _apply(st_, "e9", T0 + 6000 + 1801 * 1000, "z").state
    assert later.session_id != st_.session_id and later.last_viewed == ("z",)


def test_out_of_order_view_lands_in_event_time_order():
    st_ = _apply(None, "e1", T0, "a").state
    st_ = _apply(st_, "e2", T0 + 2000, "c").state
    upd = _apply(st_, "e3", T0 + 1000, "b")  # arrives late, happened in between
    assert [i for i, _ in upd.state.sequence] == ["a", "b", "c"]
    assert upd.state.last_viewed == ("c", "b", "a")


def test_covisit_pairs_weighted_by_distance():
    st_ = None
    for i, item in enumerate("abc"):
        upd = _apply(st_, f"e{i}", T0 + i, item)
        st_ = upd.state
    assert set(upd.pairs) == {("b", "c", 1.0), ("c", "b", 1.0), ("a", "c", 0.5), ("c", "a", 0.5)}


def test_user_preferences_and_price_sensitivity():
    p = UF.UserParams(half_life_s=7 * 86400, horizon_s=30 * 86400)
    u = None
    prices = [10.0, 30.0, 20.0, 80.0]
    for i, price in enumerate(prices):
        u = UF.apply_event(u, etype="purchase", ts_ms=T0 + i, category="shoes", price=price, p=p)
    u = UF.apply_event(u, etype="view", ts_ms=T0 + 10, category="hats", price=0.0, p=p)
    prefs = u.preferences(T0 + 10, p)
    assert math.isclose(sum(prefs.values()), 1.0)
    assert prefs["shoes"] > 0.9  # 4 purchases (weight 5) vs 1 view
    assert math.isclose(u.price_mean, np.mean(prices)) and math.isclose(u.price_std, np.std(prices, ddof=1))
    # one view older than the horizon is pruned; 4 purchases (weight 20) 31 days old are not
    u = UF.apply_event(u, etype="view", ts_ms=T0 + 31 * 86400 * 1000, category="bags", price=0, p=p)
    assert dict(u.cat_pref).keys() == {"bags", "shoes"}


def test_item_rates_are_smoothed_and_catalog_is_newest_wins():
    p = IF.ItemParams(half_life_s=7 * 86400, trend_half_life_s=3600)
    fresh = IF.apply_event(None, "impression", T0, p).to_dict(p)
    assert 0 < fresh["ctr"] < 0.1  # one impression, no click: not 0
    it = None
    for i in range(200):
        it = IF.apply_event(it, "impression", T0 + i, p)
    for i in range(50):
        it = IF.apply_event(it, "click", T0 + 300 + i, p)
    assert 0.2 < it.to_dict(p)["ctr"] < 0.25  # ~50/200 pulled slightly to the 2% prior
    new = IF.apply_catalog(it, category="c2", brand="b", price=9.0, active=True, updated_ms=T0 + 5)
    old = IF.apply_catalog(new, category="c1", brand="b", price=5.0, active=True, updated_ms=T0)
    assert old.category == "c2" and old.price == 9.0
