"""Latency histograms (``sim/latency.py`` over hdrhistogram's HdrHistogram) against numpy on the
same random samples, within HDR's 3-significant-digit precision: percentiles, merges, the plot's
percentile curve, empty histograms, huge and invalid values, and the report fields (load test,
simulator) built on them, in milliseconds."""

from __future__ import annotations

import numpy as np
import pytest
from hdrh.histogram import HdrHistogram

from sim.latency import MAX_US, cdf_points, new_histogram, record_us
from sim.loadtest import PERCENTILES, LoadResult
from sim.stats import Stats

QS = (0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0)
REL = 1e-3  # 3 significant digits: a bucket is at most 1/1024 of its values wide
MS_ROUND = 0.0005  # reports round milliseconds to 3 decimals


def _samples(name: str, n: int, seed: int = 12345) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if name == "lognormal":  # typical RPC latency: median ~2 ms, long tail
        return rng.lognormal(mean=np.log(2000), sigma=1.0, size=n)
    if name == "uniform_log":  # 1 us .. 1 h, every decade covered
        return 10 ** rng.uniform(0, np.log10(MAX_US), size=n)
    if name == "exponential":
        return rng.exponential(50_000, size=n)
    if name == "bimodal":  # fast path + fallback path
        return np.concatenate(
            [rng.normal(800, 50, n // 2).clip(1), rng.normal(120_000, 5_000, n - n // 2).clip(1)]
        )
    assert name == "exact"  # below 2048 us every integer has its own bucket
    jitter = rng.uniform(-0.49, 0.49, size=n)  # rounding, not truncation, gives the integer back
    return (rng.integers(0, 2048, size=n) + jitter).clip(0)


def _filled(values: np.ndarray) -> HdrHistogram:
    h = new_histogram()
    for v in values:
        record_us(h, float(v))
    return h


def _bounds(ints: np.ndarray, q: float) -> tuple[float, float]:
    """The order statistics a nearest-rank q-th percentile may be: numpy's (rank ceil(q n)) and
    the one below it (HDR rounds the rank, ceil(q n) - 1 <= round(q n) <= ceil(q n))."""
    hi = float(np.percentile(ints, q, method="inverted_cdf"))
    lo = float(np.percentile(ints, max(0.0, q - 100.0 / ints.size), method="inverted_cdf"))
    return lo, hi


def _check_percentiles(h: HdrHistogram, ints: np.ndarray) -> None:
    for q in QS:
        lo, hi = _bounds(ints, q)
        got = h.get_value_at_percentile(q)
        if q == 0:  # the bottom of the lowest bucket
            assert lo * (1 - REL) <= got <= hi, f"p0: histogram {got} vs numpy {lo}..{hi}"
        else:  # the top of the value's bucket: never below it, at most 0.1% above
            assert lo <= got <= hi * (1 + REL), f"p{q}: histogram {got} vs numpy {lo}..{hi}"


@pytest.mark.parametrize("name", ["lognormal", "uniform_log", "exponential", "bimodal", "exact"])
def test_percentiles_match_numpy(name: str) -> None:
    values = _samples(name, 200_000)
    ints = np.rint(values)  # recorded as integer microseconds, rounded
    h = _filled(values)
    assert h.get_total_count() == values.size
    _check_percentiles(h, ints)
    top, bottom = float(ints.max()), float(ints.min())
    assert top <= h.get_max_value() <= top * (1 + REL)
    assert bottom * (1 - REL) <= h.get_min_value() <= bottom
    assert h.get_mean_value() == pytest.approx(float(ints.mean()), rel=REL)
    if name == "exact":  # one bucket per integer: the percentiles are numpy's own
        for q in (1.0, 50.0, 99.0, 100.0):
            assert h.get_value_at_percentile(q) in _bounds(ints, q)


def test_merge_equals_recording_everything() -> None:
    parts = [_samples("lognormal", 30_000, seed=i) * (i + 1) for i in range(4)]
    whole = _filled(np.concatenate(parts))
    merged = _filled(parts[0])
    for p in parts[1:]:
        merged.add(_filled(p))
    assert merged.equals(whole)  # bucket by bucket, count, min and max
    assert merged.get_total_count() == sum(p.size for p in parts)
    _check_percentiles(merged, np.rint(np.concatenate(parts)))
    # adding an empty histogram (an idle second) changes no count, percentile or max (hdrh
    # 0.10.8 then reads the min as 0: nothing here reports the min)
    merged.add(new_histogram())
    assert cdf_points(merged) == cdf_points(whole)
    assert merged.get_max_value() == whole.get_max_value()
    assert [merged.get_value_at_percentile(q) for q in QS] == [whole.get_value_at_percentile(q) for q in QS]
    into_empty = new_histogram()
    into_empty.add(_filled(parts[0]))
    assert into_empty.equals(_filled(parts[0]))


def test_cdf_points_are_exact_fractions_at_bucket_tops() -> None:
    ints = np.rint(_samples("bimodal", 50_000))
    h = _filled(ints)
    pts = cdf_points(h)
    values = [v for v, _ in pts]
    assert values == sorted(set(values))  # ascending, one point per recorded bucket
    for v, f in pts:
        assert round(f * ints.size) == int(np.count_nonzero(ints <= v)), v
    assert pts[-1][1] == 1.0
    assert pts[0][0] >= ints.min() and pts[-1][0] >= ints.max()


def test_empty_histogram_reads_zero() -> None:
    h = new_histogram()
    assert h.get_total_count() == 0
    assert [h.get_value_at_percentile(q) for q in QS] == [0] * len(QS)
    assert h.get_max_value() == 0 and h.get_mean_value() == 0.0
    assert cdf_points(h) == []


def test_huge_values_are_clamped_not_dropped() -> None:
    raw = new_histogram()  # why record_us exists: the library drops what it cannot hold
    assert raw.record_value(10 * MAX_US) is False and raw.get_total_count() == 0
    h = new_histogram()
    for v in (1500.0, 2500.0, MAX_US - 1, 10.0 * MAX_US, float("inf")):
        record_us(h, v)
    assert h.get_total_count() == 5
    assert MAX_US <= h.get_value_at_percentile(100) <= MAX_US * (1 + REL)
    assert MAX_US * (1 - REL) <= h.get_value_at_percentile(50) <= MAX_US * (1 + REL)
    assert 2500 <= h.get_value_at_percentile(40) <= 2500 * (1 + REL)
    stall = new_histogram()  # a 10-minute stall is within the range: kept, not clamped
    record_us(stall, 600e6)
    assert 600e6 <= stall.get_max_value() <= 600e6 * (1 + REL)


def test_invalid_values_raise_and_count_nothing() -> None:
    h = new_histogram()
    for bad in (-1.0, -1e-9, float("nan")):
        with pytest.raises(ValueError):
            record_us(h, bad)
    assert h.get_total_count() == 0
    record_us(h, 0.4)  # rounds to 0 us: still counted
    assert h.get_total_count() == 1 and h.get_value_at_percentile(100) == 0


def _ms_close(got: float, want_lo_us: float, want_hi_us: float) -> bool:
    return want_lo_us / 1000 - MS_ROUND <= got <= want_hi_us * (1 + REL) / 1000 + MS_ROUND


def test_load_test_report_in_milliseconds() -> None:
    lat = _samples("lognormal", 20_000, seed=5)
    svc = lat * 0.5
    lag = np.full(lat.size, 20_000.0)  # 20 ms behind schedule: client-bound
    res = LoadResult("echo", "127.0.0.1:1", 1000.0, 2.0, per_second=[new_histogram() for _ in range(3)])
    for i, (a, b, c) in enumerate(zip(lat, svc, lag, strict=True)):
        record_us(res.latency, float(a))
        record_us(res.service, float(b))
        record_us(res.send_lag, float(c))
        record_us(res.per_second[i % 2], float(a))
    rep = res.report()
    ints = np.rint(lat)
    for key, q in PERCENTILES.items():
        assert _ms_close(rep[key], *_bounds(ints, q)), (key, rep[key])
    assert _ms_close(rep["service_p50_ms"], *_bounds(np.rint(svc), 50.0))
    assert _ms_close(rep["service_p99_ms"], *_bounds(np.rint(svc), 99.0))
    assert _ms_close(rep["send_lag_p99_ms"], 20_000, 20_000) and rep["client_bound"] is True
    assert _ms_close(rep["max_ms"], ints.max(), ints.max())
    assert rep["mean_ms"] == pytest.approx(ints.mean() / 1000, rel=REL, abs=MS_ROUND)
    assert [s["count"] for s in rep["timeline"]] == [10_000, 10_000, 0]
    assert _ms_close(rep["timeline"][0]["p99_ms"], *_bounds(ints[0::2], 99.0))
    assert rep["timeline"][2] == {"t": 2, "count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
    fast = LoadResult("echo", "127.0.0.1:1", 1000.0, 1.0)
    record_us(fast.send_lag, 1000.0)  # 1 ms behind schedule: not client-bound
    assert fast.client_bound is False


def test_empty_load_test_report() -> None:
    rep = LoadResult("echo", "127.0.0.1:1", 100.0, 1.0, per_second=[new_histogram()]).report()
    assert all(rep[k] == 0.0 for k in (*PERCENTILES, "mean_ms", "max_ms", "send_lag_p99_ms"))
    assert rep["timeline"] == [{"t": 0, "count": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}]


def test_simulator_rpc_percentiles_in_milliseconds() -> None:
    assert Stats().report()["rpc_p50_ms"] == 0.0 and Stats().report()["rpc_p99_ms"] == 0.0
    ms = _samples("exponential", 5_000, seed=9) / 1000.0  # ~50 ms
    st = Stats()
    for v in ms:
        st.rpc(float(v))
    rep = st.report()
    assert rep["requests"] == ms.size
    ints = np.rint(ms * 1000.0)
    for key, q in (("rpc_p50_ms", 50.0), ("rpc_p99_ms", 99.0)):
        lo, hi = _bounds(ints, q)
        assert lo / 1000 <= rep[key] <= hi * (1 + REL) / 1000, (key, rep[key])
