"""HNSW index: build time, k=100 query latency and recall vs exact inner product, updates, memory.

Vectors are clustered (unit centroids plus isotropic noise, renormalised), not uniform, so
recall is meaningful; queries are fresh draws from the same mixture. The baseline is exact
brute force (one float32 matrix-vector product plus top-k, torch, one thread) measured in
the same run. Query latency is the serving path (``AnnIndex.query``: lock, search, id
mapping), one thread, wall clock; its thread CPU time is reported beside it, since on a
shared machine the wall-clock tail includes time spent waiting for a core.
``bytes_per_item`` is the process RSS growth while building (hnswlib graph + vectors + the
id maps) divided by items; the hnswlib file size per item is reported too. Updates go
through ``AnnIndex.upsert`` in write-batch chunks, one thread, as the changelog follower
applies them: half replace existing vectors, half add new items.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from core.settings import Settings
from core.terminal import progress
from online.ann.index import AnnIndex

K = 100
BUILD_CHUNK = 50_000  # rows per bulk add (and per progress update)
GOALS = {"recall_at_100": 0.95, "query_p99_us": 2000.0, "bytes_per_item": 1024.0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=1_000_000, help="vectors in the index")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000, help="timed queries (recall on all)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--ef", type=int, default=150, help="HNSW search breadth (>= k)")
    p.add_argument("--m", type=int, default=16, help="HNSW links per node")
    p.add_argument("--ef-construction", type=int, default=100)
    p.add_argument("--clusters", type=int, default=0, help="default: items / 1000")
    p.add_argument("--noise", type=float, default=1.0, help="noise norm relative to centroid")
    p.add_argument("--updates", type=int, default=20_000, help="upserts into the built index")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="build threads")
    p.add_argument("--report", type=Path, help="write the JSON report here")


def clustered(n: int, dim: int, centroids: npt.NDArray[np.float32], noise: float,
              rng: np.random.Generator, chunk: int = 100_000) -> npt.NDArray[np.float32]:
    """Unit vectors: a random centroid + N(0, noise^2/dim) per coordinate, renormalised."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = rng.standard_normal((m, dim), dtype=np.float32) * np.float32(noise / np.sqrt(dim))
        x += centroids[rng.integers(0, centroids.shape[0], size=m)]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def rss_bytes() -> int:
    """Current resident set size after returning freed heap to the OS (Linux; 0 elsewhere)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def percentile_us(samples_ns: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(samples_ns, dtype=np.float64), q) / 1e3)


def exact_topk(x: torch.Tensor, queries: npt.NDArray[np.float32], k: int,
               chunk: int = 64) -> npt.NDArray[np.int64]:
    """Exact top-k rows of ``x`` by inner product for every query (batched)."""
    out = []
    for start in range(0, queries.shape[0], chunk):
        scores = torch.from_numpy(queries[start : start + chunk]) @ x.T
        out.append(torch.topk(scores, k, dim=1).indices.numpy())
    return np.concatenate(out)


def time_exact(x: torch.Tensor, queries: npt.NDArray[np.float32], k: int) -> list[int]:
    """Per-query latency of one-thread brute force (the baseline)."""
    samples = []
    for q in queries:
        t0 = time.perf_counter_ns()
        torch.topk(x @ torch.from_numpy(q), k)
        samples.append(time.perf_counter_ns() - t0)
    return samples


def time_ann(index: AnnIndex, queries: npt.NDArray[np.float32], k: int,
             cpu: list[int] | None = None) -> tuple[list[int], list[list[str]]]:
    """Wall-clock ns per query (and this thread's CPU ns into ``cpu``), plus the hits."""
    samples, results = [], []
    for q in queries:
        c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
        hits = index.query(q, k)
        samples.append(time.perf_counter_ns() - t0)
        if cpu is not None:
            cpu.append(time.thread_time_ns() - c0)
        results.append([item for item, _ in hits])
    return samples, results


def recall(results: list[list[str]], truth: npt.NDArray[np.int64], ids: list[str]) -> float:
    got = [len(set(r) & {ids[j] for j in row}) / truth.shape[1]
           for r, row in zip(results, truth, strict=True)]
    return float(np.mean(got))


def ef_sweep(index: AnnIndex, queries: npt.NDArray[np.float32], truth: npt.NDArray[np.int64],
             ids: list[str], efs: list[int]) -> list[dict[str, float]]:
    """Recall and latency at other search breadths (the tuning curve); restores ef."""
    keep, rows = index.ef, []
    for ef in efs:
        index.set_ef(ef)
        ns, results = time_ann(index, queries, K)
        rows.append({"ef": ef, "recall_at_100": round(recall(results, truth, ids), 4),
                     "query_p50_us": round(percentile_us(ns, 50), 1),
                     "query_p99_us": round(percentile_us(ns, 99), 1)})
    index.set_ef(keep)
    return rows


def apply_updates(index: AnnIndex, ids: list[str], n: int, dim: int,
                  centroids: npt.NDArray[np.float32], noise: float,
                  rng: np.random.Generator) -> float:
    """Upserts/s: n/2 replaced vectors of existing ids + n/2 new ids, one thread."""
    vecs = clustered(n, dim, centroids, noise, rng)
    old = [ids[int(i)] for i in rng.integers(0, len(ids), size=n // 2)]
    new = [f"new{i}" for i in range(n - len(old))]
    t0 = time.perf_counter()
    index.upsert(old + new, vecs, num_threads=1)
    return n / (time.perf_counter() - t0)


def query_under_updates(index: AnnIndex, queries: npt.NDArray[np.float32],
                        upd: npt.NDArray[np.float32]) -> list[int]:
    """Query latency while another thread applies upserts (lock contention included)."""
    done = threading.Event()

    def writer() -> None:
        for start in range(0, upd.shape[0], index.write_batch):
            if done.is_set():
                return
            part = upd[start : start + index.write_batch]
            index.upsert([f"live{start + i}" for i in range(part.shape[0])], part)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    samples, _ = time_ann(index, queries, K)
    done.set()
    t.join()
    return samples


def measure(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    clusters = args.clusters or max(1, args.items // 1000)
    centroids = rng.standard_normal((clusters, args.dim), dtype=np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    data = clustered(args.items, args.dim, centroids, args.noise, rng)
    queries = clustered(args.queries, args.dim, centroids, args.noise, rng)
    ids = [f"i{n}" for n in range(args.items)]
    load_before = os.getloadavg()[0]

    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index = AnnIndex(args.dim, capacity=args.items, m=args.m,
                     ef_construction=args.ef_construction, ef=args.ef, seed=args.seed)
    with progress("build HNSW index", total=args.items) as bar:  # a bar on a terminal only
        for start in range(0, args.items, BUILD_CHUNK):
            index.upsert(ids[start : start + BUILD_CHUNK], data[start : start + BUILD_CHUNK],
                         chunk=BUILD_CHUNK, num_threads=args.threads)
            bar.advance(min(BUILD_CHUNK, args.items - start))
    build_s = time.perf_counter() - t0
    rss_delta = rss_bytes() - rss0

    torch.set_num_threads(max(1, args.threads))
    truth = exact_topk(torch.from_numpy(data), queries, K)
    torch.set_num_threads(1)
    time_ann(index, queries[:100], K)  # warm-up, not counted
    cpu_ns: list[int] = []
    ann_ns, results = time_ann(index, queries, K, cpu_ns)
    exact_ns = time_exact(torch.from_numpy(data), queries[: min(100, len(queries))], K)
    sweep = ef_sweep(index, queries, truth, ids, [e for e in (100, 150, 200, 300) if e != args.ef])
    file_bytes = int(index._index.index_file_size())  # graph + vectors + labels as stored
    updates_per_s = apply_updates(index, ids, args.updates, args.dim, centroids, args.noise, rng)
    contended = query_under_updates(
        index, queries[: min(500, len(queries))],
        clustered(20_000, args.dim, centroids, args.noise, rng))
    p50, exact_p50 = percentile_us(ann_ns, 50), percentile_us(exact_ns, 50)
    return {
        "items": args.items, "build_s": round(build_s, 2),
        "query_p50_us": round(p50, 1), "query_p99_us": round(percentile_us(ann_ns, 99), 1),
        "recall_at_100": round(recall(results, truth, ids), 4),
        "updates_per_s": round(updates_per_s, 1),
        "bytes_per_item": round(rss_delta / args.items, 1),
        "bytes_per_item_method": "process RSS growth during build / items",
        "index_file_bytes_per_item": round(file_bytes / args.items, 1),
        "query_cpu_p50_us": round(percentile_us(cpu_ns, 50), 1),
        "query_cpu_p99_us": round(percentile_us(cpu_ns, 99), 1),
        "exact_query_p50_us": round(exact_p50, 1),
        "exact_query_p99_us": round(percentile_us(exact_ns, 99), 1),
        "speedup_vs_exact": round(exact_p50 / p50, 1),
        "query_p99_us_during_updates": round(percentile_us(contended, 99), 1),
        "ef_sweep": sweep,
        "ef": args.ef, "m": args.m, "ef_construction": args.ef_construction,
        "dim": args.dim, "clusters": clusters, "noise": args.noise, "k": K,
        "build_threads": args.threads, "cores": os.cpu_count(),
        "loadavg_1m_start_end": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "hnswlib_version": _hnswlib_version(),
    }


def _hnswlib_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hnswlib")
    except PackageNotFoundError:
        return "unknown"


def summary(r: dict[str, Any]) -> str:
    ok = {
        "recall_at_100": r["recall_at_100"] >= GOALS["recall_at_100"],
        "query_p99_us": r["query_p99_us"] <= GOALS["query_p99_us"],
        "bytes_per_item": r["bytes_per_item"] <= GOALS["bytes_per_item"],
    }
    mark = {k: "ok" if v else "MISSED" for k, v in ok.items()}
    return "\n".join([
        f"ANN bench: {r['items']:,} items x {r['dim']} dims, {r['clusters']} clusters, "
        f"M={r['m']} ef_construction={r['ef_construction']} ef={r['ef']}, k={r['k']}",
        f"  build            {r['build_s']:.1f} s ({r['build_threads']} threads)",
        f"  query (1 thread) p50 {r['query_p50_us']:.0f} us, p99 {r['query_p99_us']:.0f} us"
        f"  [goal p99 <= 2000 us: {mark['query_p99_us']}]",
        f"  query CPU time   p50 {r['query_cpu_p50_us']:.0f} us, p99 {r['query_cpu_p99_us']:.0f} us"
        f" (wall minus waiting for a core; load avg {r['loadavg_1m_start_end']})",
        f"  exact baseline   p50 {r['exact_query_p50_us']:.0f} us -> ANN is "
        f"{r['speedup_vs_exact']:.0f}x faster (same run)",
        f"  recall@100       {r['recall_at_100']:.4f}  [goal >= 0.95: {mark['recall_at_100']}]",
        "  ef sweep         " + "; ".join(
            f"ef={row['ef']}: recall {row['recall_at_100']:.4f} p50 {row['query_p50_us']:.0f} us"
            f" p99 {row['query_p99_us']:.0f} us" for row in r["ef_sweep"]),
        f"  updates          {r['updates_per_s']:,.0f} upserts/s (1 thread); query p99 while "
        f"updating {r['query_p99_us_during_updates']:.0f} us",
        f"  memory           {r['bytes_per_item']:.0f} B/item RSS "
        f"({r['index_file_bytes_per_item']:.0f} B/item hnswlib file)  "
        f"[goal <= 1024: {mark['bytes_per_item']}]",
    ])


def run(settings: Settings, args: argparse.Namespace) -> int:
    del settings  # self-contained: no Redis/Kafka needed
    if args.items < K or args.ef < K:
        raise SystemExit(f"--items and --ef must be >= k={K}")
    report = measure(args)
    print(summary(report))
    if args.report:
        write_json(args.report, report)
        print(f"report: {args.report}")
    return 0
