"""The open-loop load generator: rate accuracy against a real echo server in a subprocess,
coordinated-omission-free latency under a server stall, error / degraded accounting, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from hdrh.histogram import HdrHistogram

from proto import recommend_pb2, recommend_pb2_grpc
from recsys.bench.echo import EchoProcess
from recsys.embedded.redis_server import free_port
from sim.latency import cdf_points, new_histogram, record_us
from sim.loadtest import LoadTestError, recommend_requests, run_open_loop

ROOT = Path(__file__).resolve().parent.parent
REPORT_KEYS = {"target_rps", "achieved_rps", "p50_ms", "p90_ms", "p99_ms", "p999_ms",
               "errors", "degraded_rate"}


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoProcess]:
    with EchoProcess() as server:
        yield server


def test_sustains_the_target_rate_against_echo(echo: EchoProcess) -> None:
    rps, duration = 800.0, 4.0
    res = run_open_loop("echo", echo.address, rps, duration)
    report = res.report()
    assert report.keys() >= REPORT_KEYS
    assert res.errors == 0, report["errors_by_code"]
    assert res.requests == res.sent == res.ok == int(rps * duration)
    assert abs(res.achieved_rps - rps) <= 0.05 * rps, report
    assert 0 < report["p50_ms"] <= report["p90_ms"] <= report["p99_ms"] <= report["p999_ms"]
    assert report["p999_ms"] <= report["max_ms"]
    assert [s["count"] for s in report["timeline"]] == [int(rps)] * int(duration)


class _StallingRecommender(recommend_pb2_grpc.RecommendServiceServicer):
    """One handler thread; one request (user 'stall') freezes it for ``stall_s``;
    users u<id> with id % 4 == 0 get a degraded answer, id % 10 == 1 are refused."""

    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self.stalled = threading.Event()

    def Recommend(
        self, request: recommend_pb2.RecommendRequest, context: grpc.ServicerContext
    ) -> recommend_pb2.RecommendResponse:
        if request.user_id == "stall" and not self.stalled.is_set():
            self.stalled.set()
            time.sleep(self.stall_s)
        tail = request.user_id[1:]
        uid = int(tail) if request.user_id.startswith("u") and tail.isdigit() else 2
        if uid % 10 == 1:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shed")
        items = [recommend_pb2.ScoredItem(item_id=f"i{j}", position=j) for j in range(request.k)]
        return recommend_pb2.RecommendResponse(items=items, degraded=uid % 4 == 0)


def _serve(servicer: _StallingRecommender) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    recommend_pb2_grpc.add_RecommendServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


def test_latency_is_measured_from_the_schedule_through_a_stall() -> None:
    """A 300 ms server freeze delays every request scheduled during it: an open-loop
    generator must record ~60 slow requests at 200 rps, not one (coordinated omission)."""
    stall_s, rps = 0.3, 200.0
    server, address = _serve(_StallingRecommender(stall_s))
    base = recommend_requests(users=1000, k=5, seed=1, user_prefix="x")  # x-ids: never refused

    def make(i: int) -> bytes:
        if i == 200:  # one second into the schedule (warm-up calls use i < 50)
            return recommend_pb2.RecommendRequest(user_id="stall", k=5).SerializeToString()
        return base(i)

    try:
        res = run_open_loop("recommend", address, rps, 2.0, make)
    finally:
        server.stop(0)
    assert res.errors == 0
    n = res.latency.get_total_count()
    slow = n - round(n * _fraction_below(res.latency, 50_000))
    assert slow >= 40, f"only {slow} requests over 50 ms: the stall was under-counted"
    assert res.percentile_ms(99) >= 200.0
    assert res.percentile_ms(50) < 50.0


def _fraction_below(h: HdrHistogram, value_us: float) -> float:
    below = [f for v, f in cdf_points(h) if v < value_us]
    return below[-1] if below else 0.0


def test_counts_errors_by_code_and_degraded_answers() -> None:
    server, address = _serve(_StallingRecommender(0.0))
    make = recommend_requests(users=500, k=3, seed=5)
    try:
        res = run_open_loop("recommend", address, 300.0, 1.0, make, warmup_requests=0)
    finally:
        server.stop(0)
    uids = [int(recommend_pb2.RecommendRequest.FromString(make(i)).user_id[1:])
            for i in range(res.requests)]
    refused = sum(1 for u in uids if u % 10 == 1)
    degraded = sum(1 for u in uids if u % 4 == 0 and u % 10 != 1)
    assert refused > 0 and degraded > 0
    assert res.errors_by_code == Counter({"RESOURCE_EXHAUSTED": refused})
    assert res.ok == res.requests - refused
    assert res.degraded_rate == pytest.approx(degraded / res.ok)
    assert res.report()["errors"] == refused


class _Process(recommend_pb2_grpc.RecommendServiceServicer):
    """One of two 'server processes' on one SO_REUSEPORT port; counts the calls it holds."""

    def __init__(self, name: str, delay_s: float) -> None:
        self.name, self.delay_s = name, delay_s
        self.held = self.most_held = 0
        self.lock = threading.Lock()
        self.core = threading.Lock()  # one call at a time: 1 / delay_s calls per second

    def Recommend(self, request: recommend_pb2.RecommendRequest, context: grpc.ServicerContext
                  ) -> recommend_pb2.RecommendResponse:
        with self.lock:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
        with self.core:
            time.sleep(self.delay_s)
        with self.lock:
            self.held -= 1
        return recommend_pb2.RecommendResponse(served_by=self.name)


@contextmanager
def _reuseport(procs: list[_Process]) -> Iterator[int]:
    """One gRPC server per 'process' on one SO_REUSEPORT port (as `recsys serve --workers N`);
    yields the port."""
    port = free_port()
    servers = []
    try:
        for proc in procs:
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                                 options=[("grpc.so_reuseport", 1)])
            recommend_pb2_grpc.add_RecommendServiceServicer_to_server(proc, server)
            assert server.add_insecure_port(f"127.0.0.1:{port}") == port
            server.start()
            servers.append(server)
        yield port
    finally:
        for server in servers:
            server.stop(0)


def test_least_request_over_server_processes() -> None:
    """Two servers on one port (as `recsys serve --workers 2`), one ten times slower: the
    'process' policy learns which channel reaches which and sends each call to the one with
    fewer in flight, so the slow one (20 calls/s) never holds a pile of calls, as it does
    when calls go to its channels blind (its share of the connections of 40 calls/s)."""
    procs = [_Process("fast", 0.005), _Process("slow", 0.05)]
    with _reuseport(procs) as port:
        res = run_open_loop("recommend", f"127.0.0.1:{port}", 40.0, 3.0,
                            recommend_requests(users=50, k=1, seed=2), channels=16,
                            balance="process")
    assert res.errors == 0 and res.balance == "process"
    by = res.report()["calls_by_process"]
    assert set(by) == {"fast", "slow"}, by  # the kernel gave both some of the 16 connections
    assert sum(by.values()) == res.ok
    slow = procs[1]
    assert slow.most_held <= 2, f"the slow server held {slow.most_held} calls at once"
    assert by["slow"] < by["fast"]


def test_processes_each_get_their_share_of_few_connections() -> None:
    """Given how many processes serve the port, the 'process' policy opens connections until
    each process has channels // processes of them: with 2 channels for 2 servers, the
    kernel puts both on one server half the time; every run must still reach both (three
    runs: blind luck passes 1 in 8). Asking for more processes than answer is an error."""
    with _reuseport([_Process("a", 0.002), _Process("b", 0.002)]) as port:
        for run in range(3):
            res = run_open_loop("recommend", f"127.0.0.1:{port}", 40.0, 1.0,
                                recommend_requests(users=50, k=1, seed=run), channels=2,
                                balance="process", processes=2, warmup_requests=4)
            by = res.report()["calls_by_process"]
            assert res.errors == 0 and set(by) == {"a", "b"}, (run, by)
        with pytest.raises(LoadTestError, match="reached 2 server process"):
            run_open_loop("recommend", f"127.0.0.1:{port}", 10.0, 0.5, channels=3,
                          balance="process", processes=3, warmup_requests=3)
        with pytest.raises(LoadTestError, match="processes <= channels"):
            run_open_loop("recommend", f"127.0.0.1:{port}", 10.0, 0.5, channels=2,
                          balance="process", processes=3)


def test_clear_errors_for_bad_or_unreachable_addresses() -> None:
    with pytest.raises(LoadTestError, match="HOST:PORT"):
        run_open_loop("echo", "nonsense", 10, 1)
    with pytest.raises(LoadTestError, match="cannot reach"):
        run_open_loop("echo", "127.0.0.1:1", 10, 1, connect_timeout_s=0.5)
    with pytest.raises(LoadTestError, match="rps"):
        run_open_loop("echo", "127.0.0.1:1", 0, 1)


def test_cli_starts_its_own_echo_server_and_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "lt.json"
    proc = subprocess.run(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path), "loadtest",
         "--target", "echo", "--rps", "500", "--duration", "2", "--quiet",
         "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert data.keys() >= REPORT_KEYS
    assert data["errors"] == 0 and data["target"] == "echo"
    assert abs(data["achieved_rps"] - 500) <= 25
    assert "p99" in proc.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path), "loadtest",
         "--rps", "10", "--duration", "1", "--address", "127.0.0.1:notaport"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert bad.returncode == 2
    assert "bad address" in bad.stderr


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sim.loadtest import LoadResult
    from sim.plot import plot_results

    runs = []
    for rps in (100.0, 200.0):
        r = LoadResult("echo", "127.0.0.1:1", rps, 3.0, per_second=[new_histogram() for _ in range(3)])
        for s, h in enumerate(r.per_second):
            for v in (500.0 * (s + 1), 900.0, 20_000.0):
                record_us(h, v)
            r.latency.add(h)
        runs.append(r)
    for name, results in (("one.png", runs[:1]), ("sweep.png", runs)):
        out = plot_results(results, tmp_path / name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
