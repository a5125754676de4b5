"""EmbeddingStore + IndexFollower against the real redis-server (per-test key prefix)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from core.settings import Settings
from online.ann.follower import (
    EmbeddingStore,
    IndexFollower,
    collapse,
    decode_vector,
    parse_id,
)
from proto import codecs
from proto.keys import Keys

DIM = 16


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _store(settings: Settings, client: redis.Redis) -> EmbeddingStore:
    return EmbeddingStore(client, Keys(prefix=settings.redis_prefix))


def _follower(settings: Settings, client: redis.Redis, **kw: object) -> IndexFollower:
    registry = CollectorRegistry()
    f = IndexFollower(client, Keys(prefix=settings.redis_prefix), DIM, registry=registry,
                      block_ms=100, **kw)  # type: ignore[arg-type]
    f.registry = registry  # type: ignore[attr-defined]
    return f


def _top1_within(f: IndexFollower, vec: np.ndarray, want: str | None, t0: float,
                 limit_s: float) -> float:
    """Seconds since ``t0`` until the top hit for ``vec`` is ``want`` (None: "new" is gone)."""
    while time.monotonic() - t0 < limit_s:
        assert f.index is not None
        hits = f.index.query(vec, 5)
        if want is not None and hits and hits[0][0] == want:
            return time.monotonic() - t0
        if want is None and "new" not in {item for item, _ in hits}:
            return time.monotonic() - t0
        time.sleep(0.005)
    raise AssertionError(f"not visible within {limit_s}s")


def test_store_writes_versioned_value_and_changelog(settings: Settings,
                                                    redis_client: redis.Redis) -> None:
    store = _store(settings, redis_client)
    vec = _vectors(1, 0)[0]
    seq = store.put("a", vec, version=7, updated_ms=1234)
    got = store.get("a")
    assert got is not None and (got.version, got.updated_ms) == (7, 1234)
    np.testing.assert_array_equal(got.vector, vec)
    assert decode_vector(redis_client.get(Keys(prefix=settings.redis_prefix).item_embedding("a")))
    seq2 = store.delete(["a"])
    assert seq2 is not None and parse_id(seq2) > parse_id(seq) and store.get("a") is None
    assert redis_client.xlen(store.log_key) == 2 and store.last_seq() == seq2
    assert [item for item, _ in store.scan()] == []


def test_write_is_queryable_within_2s_and_delete_disappears(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store = _store(settings, redis_client)
    base = _vectors(300, 1)
    store.put_many([f"i{i}" for i in range(300)], base)
    f = _follower(settings, redis_client).start()
    try:
        assert f.started_from == "redis" and f.index is not None and len(f.index) == 300
        vec = _vectors(1, 2)[0]
        t0 = time.monotonic()
        store.put("new", vec)
        seen = _top1_within(f, vec, "new", t0, 2.0)
        t0 = time.monotonic()
        store.delete(["new"])
        gone = _top1_within(f, vec, None, t0, 2.0)
        print(f"write->queryable {seen * 1e3:.1f} ms, delete->gone {gone * 1e3:.1f} ms")
        reg: CollectorRegistry = f.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("recsys_ann_index_items") == 300
        assert reg.get_sample_value("recsys_ann_changes_applied_total") == 2
        assert reg.get_sample_value("recsys_ann_last_applied_seq_ms") == parse_id(
            store.last_seq())[0]
        freshness = reg.get_sample_value("recsys_ann_index_freshness_seconds")
        assert freshness is not None and 0.0 <= freshness < 5.0
    finally:
        f.stop()


def _mutate(store: EmbeddingStore) -> None:
    """Adds, in-place updates and deletes (some of just-added items) after a snapshot."""
    store.put_many([f"n{i}" for i in range(100)], _vectors(100, 11))
    store.put_many([f"i{i}" for i in range(50)], _vectors(50, 12))
    store.delete([f"i{i}" for i in range(250, 290)] + [f"n{i}" for i in range(20)])


def _assert_same_index(a: IndexFollower, b: IndexFollower, store: EmbeddingStore) -> None:
    assert a.index is not None and b.index is not None
    truth = {item: stored.vector for item, stored in store.scan()}
    assert sorted(a.index.ids()) == sorted(b.index.ids()) == sorted(truth)
    for item, vec in truth.items():
        unit = vec / np.linalg.norm(vec)
        np.testing.assert_allclose(a.index.get_vector(item), unit, atol=1e-6)
        np.testing.assert_allclose(b.index.get_vector(item), unit, atol=1e-6)
    for q in _vectors(20, 13):
        assert [i for i, _ in a.index.query(q, 10)] == [i for i, _ in b.index.query(q, 10)]


def _catch_up(f: IndexFollower, store: EmbeddingStore) -> None:
    f.start()
    assert f.wait_until(store.last_seq(), timeout=5.0)


def test_snapshot_plus_changelog_restart_equals_fresh_build(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = _store(settings, redis_client)
    store.put_many([f"i{i}" for i in range(300)], _vectors(300, 10))
    first = _follower(settings, redis_client, snapshot_dir=tmp_path / "snap")
    _catch_up(first, store)
    first.snapshot()
    first.stop()
    _mutate(store)

    restarted = _follower(settings, redis_client, snapshot_dir=tmp_path / "snap")
    _catch_up(restarted, store)
    fresh = _follower(settings, redis_client)
    _catch_up(fresh, store)
    try:
        assert (restarted.started_from, fresh.started_from) == ("snapshot", "redis")
        reg: CollectorRegistry = restarted.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("recsys_ann_changes_applied_total") == 210  # tail only
        _assert_same_index(restarted, fresh, store)
    finally:
        restarted.stop()
        fresh.stop()


def test_changelog_trimmed_past_snapshot_forces_rebuild(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = _store(settings, redis_client)
    store.put_many([f"i{i}" for i in range(300)], _vectors(300, 20))
    first = _follower(settings, redis_client, snapshot_dir=tmp_path / "snap")
    _catch_up(first, store)
    first.snapshot()
    first.stop()
    _mutate(store)
    redis_client.xtrim(store.log_key, maxlen=5, approximate=False)  # entries lost

    restarted = _follower(settings, redis_client, snapshot_dir=tmp_path / "snap")
    fresh = _follower(settings, redis_client)
    _catch_up(restarted, store)
    _catch_up(fresh, store)
    try:
        assert restarted.started_from == "redis"
        _assert_same_index(restarted, fresh, store)
    finally:
        restarted.stop()
        fresh.stop()


def test_periodic_snapshot_and_bad_entries(
    settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    store = _store(settings, redis_client)
    f = _follower(settings, redis_client, snapshot_dir=tmp_path / "snap",
                  snapshot_interval_s=0.05)
    f.start()
    try:
        redis_client.xadd(store.log_key, {"d": b"not msgpack"})
        store.put("a", _vectors(1, 30)[0])
        store.put("b", np.ones(DIM + 3, dtype=np.float32))  # wrong dimension: skipped
        with pytest.raises(ValueError, match="zero or non-finite"):
            store.put("c", np.zeros(DIM, dtype=np.float32))
        redis_client.xadd(store.log_key, {"d": codecs.encode(  # bypassing the store's check
            {"op": "up", "item": "z", "v": np.zeros(DIM, np.float32).tobytes(), "ms": 1})})
        assert f.wait_until(store.last_seq(), timeout=5.0)
        assert f.index is not None and f.index.ids() == ["a"]
        reg: CollectorRegistry = f.registry  # type: ignore[attr-defined]
        assert reg.get_sample_value("recsys_ann_follow_errors_total", {"reason": "decode"}) == 1
        assert reg.get_sample_value("recsys_ann_follow_errors_total", {"reason": "dim"}) == 1
        assert reg.get_sample_value("recsys_ann_follow_errors_total", {"reason": "invalid"}) == 1
        assert f._thread is not None and f._thread.is_alive()
        assert not f.wait_until("99999999999999-0", timeout=0.05)
        deadline = time.monotonic() + 5
        while not (tmp_path / "snap" / "meta.msgpack").exists():
            assert time.monotonic() < deadline, "no periodic snapshot"
            time.sleep(0.02)
    finally:
        f.stop()


def test_poll_before_open_is_an_error(settings: Settings, redis_client: redis.Redis) -> None:
    with pytest.raises(RuntimeError, match="open"):
        _follower(settings, redis_client).poll_once()


def test_collapse_keeps_last_valid_change_per_item() -> None:
    def entry(n: int, obj: dict) -> tuple[bytes, dict[bytes, bytes]]:
        return f"1-{n}".encode(), {b"d": codecs.encode(obj)}

    v = np.ones(DIM, np.float32).tobytes()
    entries = [
        entry(1, {"op": "up", "item": "a", "v": v, "ms": 5}),
        entry(2, {"op": "del", "item": "a", "ms": 6}),
        entry(3, {"op": "up", "item": "b", "v": v, "ms": 7}),
        entry(4, {"op": "up", "item": "b", "v": np.ones(3, np.float32).tobytes(), "ms": 8}),
        entry(5, {"op": "up", "item": "c", "v": np.full(DIM, np.nan, np.float32).tobytes()}),
        (b"1-6", {b"d": b"\xc1"}),
    ]
    changes, rejected = collapse(entries, DIM)
    assert [(c.item, c.op, c.ms) for c in changes] == [("a", "del", 6), ("b", "up", 7)]
    assert rejected == {"dim": 1, "invalid": 1, "decode": 1}
