"""The latency histogram against numpy on random data, within its stated precision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.histogram import SUB_COUNT, Histogram, bucket_bounds, bucket_index

QS = (0.0, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0)
REL = 0.01  # stated precision: 1% relative (buckets are <= 0.78% wide, midpoint reported)


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= REL * want + 1.0  # +1 us: values are integer microseconds


def _check(h: Histogram, values: np.ndarray) -> None:
    ints = np.rint(values)
    for q in QS:
        want = float(np.percentile(ints, q, method="inverted_cdf"))
        got = h.percentile(q)
        assert _close(got, want), f"p{q}: histogram {got} vs numpy {want}"


@pytest.mark.parametrize(
    "name",
    ["lognormal", "uniform", "exponential", "bimodal", "tiny"],
)
def test_percentiles_match_numpy(name: str) -> None:
    rng = np.random.default_rng(12345)
    n = 200_000
    if name == "lognormal":  # typical RPC latency: median ~2 ms, long tail
        values = rng.lognormal(mean=np.log(2000), sigma=1.0, size=n)
    elif name == "uniform":  # 1 us .. 60 s, every decade covered
        values = 10 ** rng.uniform(0, np.log10(60e6), size=n)
    elif name == "exponential":
        values = rng.exponential(50_000, size=n)
    elif name == "bimodal":  # fast path + fallback path
        values = np.concatenate(
            [rng.normal(800, 50, n // 2).clip(1), rng.normal(120_000, 5_000, n // 2).clip(1)]
        )
    else:  # below 128 us every value is exact
        values = rng.integers(0, 300, size=n).astype(np.float64)
    h = Histogram()
    for v in values[:2000]:  # the scalar path
        h.record(float(v))
    h.record_many(values[2000:])  # the vectorised path
    assert h.count == n
    _check(h, values)
    assert h.min_value == int(np.rint(values).min())
    assert h.max_value == int(np.rint(values).max())
    assert h.mean() == pytest.approx(float(np.rint(values).mean()), rel=1e-9)


def test_bucket_layout_is_contiguous_and_narrow() -> None:
    prev_high = 0
    for index in range(bucket_index(60_000_000) + 1):
        low, high = bucket_bounds(index)
        assert low == prev_high, index
        assert (high - low) / max(low, 1) <= 1 / SUB_COUNT or high - low == 1
        for v in (low, high - 1):
            assert bucket_index(v) == index
        prev_high = high


def test_scalar_and_vector_paths_agree() -> None:
    rng = np.random.default_rng(7)
    values = rng.integers(0, 60_000_001, size=20_000)
    a, b = Histogram(), Histogram()
    for v in values:
        a.record(int(v))
    b.record_many(values)
    assert a.to_dict() == b.to_dict()


def test_merge_equals_recording_everything() -> None:
    rng = np.random.default_rng(99)
    parts = [rng.lognormal(np.log(1000 * (i + 1)), 0.7, size=30_000) for i in range(4)]
    whole = Histogram()
    whole.record_many(np.concatenate(parts))
    merged = Histogram()
    for p in parts:
        h = Histogram()
        h.record_many(p)
        merged.merge(h)
    assert merged.to_dict() == whole.to_dict()
    _check(merged, np.concatenate(parts))
    with pytest.raises(ValueError, match="merge"):
        merged.merge(Histogram(max_us=1000))


def test_overflow_is_clamped_and_counted() -> None:
    h = Histogram(max_us=1_000_000)
    h.record_many([10, 20, 5_000_000])
    h.record(2_000_000)
    assert h.overflow == 2
    assert h.max_value == 1_000_000
    assert h.percentile(100) == 1_000_000


def test_round_trip_through_json() -> None:
    rng = np.random.default_rng(3)
    h = Histogram()
    h.record_many(rng.exponential(3000, size=5000))
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert back.to_dict() == h.to_dict()
    assert back.percentile(99.9) == h.percentile(99.9)


def test_empty_and_invalid() -> None:
    h = Histogram()
    assert h.percentile(99) == 0.0
    assert h.cdf_points() == []
    with pytest.raises(ValueError):
        h.record(-1)
    with pytest.raises(ValueError):
        h.record(float("nan"))
    with pytest.raises(ValueError):
        h.percentile(101)
    h.record(5)
    assert h.cdf_points() == [(5.0, 1.0)]
