"""AnnIndex: correctness against brute force, deletes/slot reuse, snapshots, concurrency."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from online.ann.index import AnnIndex, AnnIndexError, RWLock, normalise

DIM = 24


def _data(n: int, seed: int = 0, prefix: str = "i") -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"{prefix}{i}" for i in range(n)], rng.normal(size=(n, DIM)).astype(np.float32)


def _exact_top(x: np.ndarray, q: np.ndarray, k: int) -> list[int]:
    scores = normalise(x, DIM) @ normalise(q, DIM)[0]
    return np.argsort(-scores)[:k].tolist()


def test_query_matches_brute_force() -> None:
    ids, x = _data(2000)
    idx = AnnIndex(DIM, capacity=16)
    idx.upsert(ids, x)
    assert len(idx) == 2000 and idx.capacity >= 2000
    recalls = []
    for qi in range(0, 2000, 40):
        got = idx.query(x[qi], 10)
        assert got[0][0] == ids[qi] and got[0][1] == pytest.approx(1.0, abs=1e-5)
        scores = [s for _, s in got]
        assert scores == sorted(scores, reverse=True)
        exact = {ids[j] for j in _exact_top(x, x[qi], 10)}
        recalls.append(len(exact & {item for item, _ in got}) / 10)
    assert np.mean(recalls) >= 0.95, np.mean(recalls)


def test_update_replaces_vector_in_place() -> None:
    ids, x = _data(200)
    idx = AnnIndex(DIM)
    idx.upsert(ids, x)
    new = -x[7]
    idx.upsert([ids[7]], new[None, :])
    assert len(idx) == 200
    np.testing.assert_allclose(idx.get_vector(ids[7]), normalise(new, DIM)[0], atol=1e-6)
    assert idx.query(new, 1)[0][0] == ids[7]
    assert ids[7] not in {item for item, _ in idx.query(x[7], 20)}


def test_get_vectors_returns_the_held_ones_with_their_positions() -> None:
    ids, x = _data(20)
    idx = AnnIndex(DIM)
    idx.upsert(ids, x)
    found, vecs = idx.get_vectors(["nope", ids[3], ids[9], "gone"])
    assert found == [1, 2]
    np.testing.assert_allclose(vecs, normalise(x[[3, 9]], DIM), atol=1e-6)
    assert idx.get_vectors(["nope"])[0] == [] and idx.get_vectors([])[1].shape == (0, DIM)


def test_duplicate_ids_in_one_call_last_wins() -> None:
    _, x = _data(3)
    idx = AnnIndex(DIM)
    idx.upsert(["a", "b", "a"], x)
    assert len(idx) == 2
    np.testing.assert_allclose(idx.get_vector("a"), normalise(x[2], DIM)[0], atol=1e-6)


def test_delete_hides_items_and_slots_are_reused() -> None:
    ids, x = _data(200)
    idx = AnnIndex(DIM, capacity=256)
    idx.upsert(ids, x)
    assert idx.delete([*ids[:100], "absent"]) == 100
    assert len(idx) == 100 and idx.deleted_slots == 100
    for qi in range(0, 100, 10):  # a deleted item's own vector no longer finds it
        assert ids[qi] not in {item for item, _ in idx.query(x[qi], 50)}
    new_ids, new_x = _data(100, seed=1, prefix="n")
    idx.upsert(new_ids, new_x)
    assert len(idx) == 200 and idx.deleted_slots == 0 and idx.capacity == 256
    assert idx.query(new_x[3], 1)[0][0] == "n3"
    # churn (delete + add) many times over: memory (capacity) does not grow
    for round_ in range(5):
        idx.delete(new_ids)
        new_ids, new_x = _data(100, seed=10 + round_, prefix=f"r{round_}-")
        idx.upsert(new_ids, new_x)
    assert idx.capacity == 256 and len(idx) == 200


def test_exclude_and_k_larger_than_index() -> None:
    ids, x = _data(30)
    idx = AnnIndex(DIM)
    idx.upsert(ids, x)
    assert [item for item, _ in idx.query(x[0], 5, exclude=[ids[0]])][:1] != [ids[0]]
    got = idx.query(x[0], 100, exclude=ids[:10])
    assert len(got) == 20 and not {item for item, _ in got} & set(ids[:10])
    assert AnnIndex(DIM).query(x[0], 5) == []
    assert idx.query(x[0], 0) == []


def test_bad_input_is_rejected_with_a_clear_error() -> None:
    idx = AnnIndex(DIM)
    with pytest.raises(AnnIndexError, match="dimension"):
        idx.upsert(["a"], np.ones((1, DIM + 1)))
    with pytest.raises(AnnIndexError, match="zero"):
        idx.upsert(["a"], np.zeros((1, DIM)))
    with pytest.raises(AnnIndexError, match="ids for"):
        idx.upsert(["a", "b"], np.ones((1, DIM)))
    with pytest.raises(AnnIndexError, match="unreadable"):
        AnnIndex.load("/nonexistent/snapshot")


def test_snapshot_roundtrip_keeps_ids_tombstones_and_sequence(tmp_path: Path) -> None:
    ids, x = _data(500)
    idx = AnnIndex(DIM, capacity=600, ef=64)
    idx.upsert(ids, x)
    idx.delete(ids[:50])
    idx.mark_applied("1700000000000-3", updated_ms=1700000000000)
    idx.save(tmp_path / "snap")
    idx.save(tmp_path / "snap")  # a second save replaces the first, leaving one index file
    assert len(list((tmp_path / "snap").glob("index-*.hnsw"))) == 1
    back = AnnIndex.load(tmp_path / "snap")
    assert (len(back), back.deleted_slots, back.capacity) == (450, 50, idx.capacity)
    assert (back.last_seq, back.newest_update_ms, back.ef) == ("1700000000000-3", 1700000000000, 64)
    assert sorted(back.ids()) == sorted(idx.ids())
    for qi in range(50, 500, 45):
        assert back.query(x[qi], 10) == idx.query(x[qi], 10)
    new_ids, new_x = _data(50, seed=3, prefix="n")
    back.upsert(new_ids, new_x)  # tombstones survived the snapshot and are reused
    assert back.deleted_slots == 0 and back.capacity == idx.capacity


def test_rwlock_readers_share_writer_excludes() -> None:
    lock = RWLock()
    inside = threading.Barrier(2, timeout=5)
    order: list[str] = []

    def reader() -> None:
        with lock.read():
            inside.wait()  # both readers are inside at once, or this times out
            time.sleep(0.05)
            order.append("r")

    def writer() -> None:
        with lock.write():
            order.append("w")

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    w = threading.Thread(target=writer)
    w.start()
    for t in [*readers, w]:
        t.join(5)
    assert order == ["r", "r", "w"]


def test_rwlock_is_phase_fair_under_a_busy_writer() -> None:
    lock = RWLock()
    stop = threading.Event()

    def busy_writer() -> None:
        while not stop.is_set():
            with lock.write():
                time.sleep(0.001)

    w = threading.Thread(target=busy_writer)
    w.start()
    try:
        t0 = time.monotonic()
        for _ in range(50):
            with lock.read():
                pass
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        w.join(5)
    assert elapsed < 5.0  # each read waits ~one write section, never starves


def test_queries_during_concurrent_upserts_and_deletes() -> None:
    """Readers see a consistent index while a writer churns: no crash, own vector first."""
    stable_ids, stable_x = _data(1500, seed=0, prefix="s")
    idx = AnnIndex(DIM, capacity=64, write_batch=32)  # small: the writer must also resize
    idx.upsert(stable_ids, stable_x)
    errors: list[BaseException] = []
    done = threading.Event()
    counts = {"queries": 0, "writes": 0}
    worst_wait = [0.0]

    def writer() -> None:
        try:
            for round_ in range(12):
                ids, x = _data(400, seed=100 + round_, prefix=f"c{round_}-")
                idx.upsert(ids, x)
                idx.upsert(ids[:100], -x[:100])  # in-place updates
                idx.delete(ids[::2])
                counts["writes"] += 1
        except (AssertionError, RuntimeError, KeyError, ValueError, IndexError) as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set():
                qi = int(rng.integers(len(stable_ids)))
                t0 = time.monotonic()
                got = idx.query(stable_x[qi], 20)
                worst_wait[0] = max(worst_wait[0], time.monotonic() - t0)
                assert got[0][0] == stable_ids[qi], got[:3]
                assert len({item for item, _ in got}) == len(got) == 20
                assert all(-1.001 <= s <= 1.001 for _, s in got)
                counts["queries"] += 1
        except (AssertionError, RuntimeError, KeyError, ValueError, IndexError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(s,)) for s in (1, 2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[0]
    assert counts["writes"] == 12 and counts["queries"] > 50, counts
    assert len(idx) == 1500 + 12 * 200
    print(f"queries={counts['queries']} worst query wall time={worst_wait[0] * 1e3:.1f} ms")
    assert worst_wait[0] < 2.0


def test_bench_small_scale_reports_keys_and_recall(tmp_path: Path) -> None:
    import argparse
    import json

    from core.settings import Settings
    from recsys.bench import ann as bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    report = tmp_path / "ann.json"
    args = p.parse_args(["--items", "20000", "--dim", "32", "--queries", "200", "--updates",
                         "400", "--threads", "1", "--report", str(report)])
    assert bench.run(Settings(), args) == 0
    got = json.loads(report.read_text())
    required = {"items", "build_s", "query_p50_us", "query_p99_us", "recall_at_100",
                "updates_per_s", "bytes_per_item"}
    assert required <= set(got) and got["items"] == 20000
    print({k: got[k] for k in sorted(required)})
    assert got["recall_at_100"] >= 0.95
    assert 0 < got["query_p50_us"] <= got["query_p99_us"]
    assert got["build_s"] > 0 and got["updates_per_s"] > 0
    assert 32 * 4 < got["index_file_bytes_per_item"] < 1024


def test_get_vectors_match_the_index_after_updates_deletes_and_a_reload(tmp_path):
    rng = np.random.default_rng(5)
    idx = AnnIndex(8, capacity=16)
    ids = [f"i{j}" for j in range(40)]  # grows the index and its vector copy
    idx.upsert(ids, rng.normal(size=(40, 8)))
    idx.upsert(["i3", "i7"], rng.normal(size=(2, 8)))  # in-place updates
    idx.delete(["i5"])
    ask = ["i3", "nope", "i5", "i7", "i39"]

    def from_hnswlib(index: AnnIndex, items: list[str]) -> np.ndarray:
        return np.asarray(index._index.get_items([index._label_of[i] for i in items]), dtype=np.float32)

    found, vecs = idx.get_vectors(ask)
    assert found == [0, 3, 4]
    np.testing.assert_array_equal(vecs, from_hnswlib(idx, ["i3", "i7", "i39"]))
    again = AnnIndex.load(idx.save(tmp_path / "snap"))
    found2, vecs2 = again.get_vectors(ask)
    assert found2 == found
    np.testing.assert_array_equal(vecs2, vecs)
