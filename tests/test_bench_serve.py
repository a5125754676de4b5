"""``recsys bench serve`` end to end at a tiny scale, and its clean-up when it is stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True)
    children: dict[int, list[int]] = {}
    for line in out.stdout.splitlines():
        p, pp = (int(x) for x in line.split())
        children.setdefault(pp, []).append(p)
    found, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.add(c)
            todo.append(c)
    return found


def test_sigterm_stops_the_scorer_and_the_stack_it_started(tmp_path: Path) -> None:
    """Stopped mid-run (SIGTERM, as a CI timeout or a supervisor does), the benchmark must not
    leave its scorer processes and redis-server running on the machine."""
    report = tmp_path / "r.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path), "bench", "serve",
         "--items", "3000", "--users", "50", "--no-ann", "--workers", "2", "--rates", "20",
         "--echo-rates", "", "--step-s", "60", "--report", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        lines.append(line)
        if "scorer ready" in line or time.monotonic() > deadline:
            break
    assert any("scorer ready" in ln for ln in lines), "".join(lines[-20:])
    started = _descendants(proc.pid)
    assert len(started) >= 3  # redis-server, scorer worker 0 and worker 1 at least
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) != 0 and not report.exists()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in started) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in started if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"left running: {left}"


def test_small_run_reports_every_key(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path), "bench", "serve",
         "--items", "3000", "--users", "50", "--no-ann", "--workers", "2", "--rates", "20",
         "--echo-rates", "50", "--step-s", "2", "--channels-per-worker", "2",
         "--report", str(report)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(report.read_text())
    for key in ("items", "candidates", "echo_max_rps", "recommend_max_rps", "ratio", "p50_ms",
                "p99_ms", "stage_p99_ms", "cores"):
        assert key in r, key
    assert r["items"] == 3000 and r["recommend_max_rps"] in (0.0, 20.0)
    by_second = r["half_load_p99_ms_by_second"]  # the half-load run is 2 steps of 2 s
    assert len(by_second) == 4 and all(ms > 0 for ms in by_second)  # every second had calls
    # least request over both workers, each on its 2 of the 4 connections
    assert r["balance"] == "process" and r["channels"] == 4
    assert {"user_state", "retrieval", "features", "ranking", "rerank"} <= set(r["stage_p99_ms"])
    # the stand-in feature dataflow changed items, and the scorer followed the changelog
    assert r["item_changes_written"] > 0 and r["item_changes_read_worker0"] > 0
    workers = r["half_load_per_worker"]  # both served part of the 40 calls of the half-load run
    assert len(workers) == 2 and sum(w["requests"] for w in workers) >= 36, workers
    for w in workers:
        assert w["requests"] >= 5 and 0 < w["ranking_mean_ms"] < w["handler_mean_ms"], workers
    # `recsys serve` restarted itself with malloc on huge pages where THP can give them
    from core.huge_pages import thp_mode

    want = "yes" if thp_mode() in ("always", "madvise") else "no"
    assert f"malloc on huge pages: {want}" in out.stdout + out.stderr
    assert r["serve_huge_pages"] is True and r["thp"] == thp_mode()
    # the CLI chose gRPC's I/O engine before gRPC loaded, and the workers it started inherited it
    from core import grpc_env

    io = grpc_env.describe() if grpc_env.VARIABLE in os.environ else "epoll I/O manager"
    assert f"gRPC I/O: {io}" in out.stdout + out.stderr and r["grpc_io"] == io


def test_stage_p99_counts_every_worker() -> None:
    from recsys.bench.serve import stage_p99

    def scrape(fast: float, slow: float) -> dict:  # cumulative buckets of one worker
        name = "recsys_serve_stage_seconds_bucket"
        return {name: [({"stage": "ranking", "le": "0.001"}, fast),
                       ({"stage": "ranking", "le": "0.1"}, fast + slow),
                       ({"stage": "ranking", "le": "+Inf"}, fast + slow)]}
    quick, slow = scrape(10, 0), scrape(0, 10)
    assert stage_p99([{}], [quick])["ranking"] <= 1.0  # worker 0 alone: all under 1 ms
    p99 = stage_p99([{}, {}], [quick, slow])["ranking"]
    assert 90 < p99 <= 100  # half the requests took 1-100 ms on the other worker
