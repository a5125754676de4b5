"""Open-loop gRPC load generator: a fixed request schedule, latency free of coordinated omission.

Request ``i`` is *scheduled* at ``t0 + i / rps`` and sent then, whether or not earlier
requests have been answered (open loop: a slow server does not slow the generator down).
Latency is measured from the scheduled send time, not from the moment the generator got
round to sending, so a stall (server or client) shows up in the tail as the users behind
it would have felt it, instead of being silently skipped ("coordinated omission"). The
generator's own lateness (actual minus scheduled send time) is reported separately as
``send_lag_*``: when it is large, the client, not the server, was the bottleneck.

Built on ``grpc.aio``: one event loop, ``channels`` independent HTTP/2 connections. The kernel
spreads SO_REUSEPORT connections over the server processes at random, unevenly. Two balancing
policies (``balance``):

- ``"channel"`` (the default): round robin over channels, but past a channel that has calls in
  flight to the one with the fewest. Blind to which process a channel reaches, as any client of
  one SO_REUSEPORT address is: with many channels, calls go to the processes at random.
- ``"process"`` (where the target says who answered: Recommend's ``served_by``): before the run,
  one call per channel learns which server process each channel reaches; each call then goes
  to the process with the fewest calls in flight (ties in turn), on its channels in turn: the
  "least request" policy of Envoy or gRPC's client-side balancing, as when each process is an
  endpoint of its own (a port or pod per worker) behind such a balancer. Given ``processes``
  (how many serve the address), channels are added until each process has its share of
  ``channels``, so a few connections per process suffice, as a balancer holds them: fewer
  connections cost the server and the generator less per call (BENCHMARKS.md).

Reusable: ``run_open_loop(target, address, rps, duration_s, make_request) -> LoadResult``;
``LoadResult.report()`` gives the JSON report (``target_rps, achieved_rps, p50_ms, p90_ms,
p99_ms, p999_ms, errors, degraded_rate`` and extras).

Latencies are kept in HdrHistograms (``hdrhistogram``) of integer microseconds, 3 significant
digits (``sim/latency.py``); reports give milliseconds.

Definitions: ``achieved_rps`` = responses with status OK that arrived within the scheduled
window ``[t0, t0 + duration]``, divided by the duration (throughput actually sustained).
Latency percentiles include every completed call, errors too (``errors_by_code`` says how
many failed and why). ``degraded_rate`` = OK responses flagged ``degraded`` / OK responses.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
from hdrh.histogram import HdrHistogram

from proto import events_pb2, recommend_pb2
from sim.latency import new_histogram, record_us

BALANCES = ("channel", "process")  # policies of ``open_loop(balance=...)`` (module doc)
PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}
CLIENT_BACKLOG = "CLIENT_BACKLOG"  # not sent: too many calls already in flight


class LoadTestError(RuntimeError):
    """The load test cannot run (bad address, unreachable server, bad parameters)."""


@dataclass(frozen=True)
class TargetSpec:
    """How to call one RPC: full method path, codecs, and how to read a response."""

    name: str
    method: str
    response_deserializer: Callable[[bytes], Any] | None
    is_degraded: Callable[[Any], bool] | None = None
    served_by: Callable[[Any], str] | None = None  # which server process answered


TARGETS: dict[str, TargetSpec] = {
    "echo": TargetSpec("echo", "/recsys.v1.EchoService/Echo", None),
    "recommend": TargetSpec(
        "recommend",
        "/recsys.v1.RecommendService/Recommend",
        recommend_pb2.RecommendResponse.FromString,
        lambda r: bool(r.degraded),
        lambda r: str(r.served_by),
    ),
}


def echo_requests(payload_bytes: int = 64) -> Callable[[int], bytes]:
    """Pre-serialised EchoRequests with a fixed payload (a Recommend-sized request)."""
    data = recommend_pb2.EchoRequest(payload=b"x" * payload_bytes).SerializeToString()
    return lambda _i: data


def recommend_requests(
    users: int = 2000, k: int = 20, surfaces: Sequence[str] = ("home", "pdp", "cart"),
    seed: int = 7, user_prefix: str = "u", pool: int = 50_000,
) -> Callable[[int], bytes]:
    """RecommendRequests for random users (fixed seed), pre-serialised so the generator
    spends its time sending, not building protobufs. Request ``i`` is ``pool[i % len]``."""
    if users < 1 or k < 0:
        raise LoadTestError(f"need users >= 1 and k >= 0, got users={users} k={k}")
    rng = random.Random(seed)
    devices = ("web", "ios", "android")
    reqs = []
    for j in range(min(pool, max(users, 1000))):
        surface = surfaces[j % len(surfaces)]
        reqs.append(recommend_pb2.RecommendRequest(
            user_id=f"{user_prefix}{rng.randrange(users)}", surface=surface, k=k,
            context=events_pb2.Context(device=rng.choice(devices), surface=surface),
        ).SerializeToString())
    return lambda i: reqs[i % len(reqs)]


def parse_address(address: str) -> str:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LoadTestError(f"bad address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return address


@dataclass
class LoadResult:
    target: str
    address: str
    target_rps: float
    duration_s: float
    requests: int = 0  # scheduled
    sent: int = 0
    ok: int = 0
    ok_in_window: int = 0
    degraded: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    # HdrHistograms of microseconds (sim/latency.py)
    latency: HdrHistogram = field(default_factory=new_histogram)
    send_lag: HdrHistogram = field(default_factory=new_histogram)
    service: HdrHistogram = field(default_factory=new_histogram)  # from the actual send (uncorrected)
    per_second: list[HdrHistogram] = field(default_factory=list)  # by scheduled second
    elapsed_s: float = 0.0  # t0 until the last call finished
    balance: str = "channel"  # the policy that ran (module doc)
    by_process: Counter[str] = field(default_factory=Counter)  # OK calls per server process

    @property
    def errors(self) -> int:
        return sum(self.errors_by_code.values())

    @property
    def achieved_rps(self) -> float:
        return self.ok_in_window / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def degraded_rate(self) -> float:
        return self.degraded / self.ok if self.ok else 0.0

    @property
    def client_bound(self) -> bool:
        """The generator itself fell behind its schedule (p99 send lag > 10 ms): the numbers
        then describe the client's limit as much as the server's."""
        return self.send_lag.get_value_at_percentile(99) > 10_000 or self.errors_by_code[CLIENT_BACKLOG] > 0

    def percentile_ms(self, q: float) -> float:
        return self.latency.get_value_at_percentile(q) / 1000.0

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target,
            "address": self.address,
            "target_rps": self.target_rps,
            "achieved_rps": round(self.achieved_rps, 2),
            **{k: round(self.percentile_ms(q), 3) for k, q in PERCENTILES.items()},
            "errors": self.errors,
            "degraded_rate": round(self.degraded_rate, 6),
            "errors_by_code": dict(sorted(self.errors_by_code.items())),
            "requests": self.requests,
            "sent": self.sent,
            "ok": self.ok,
            "duration_s": self.duration_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "mean_ms": round(self.latency.get_mean_value() / 1000.0, 3),
            "max_ms": round(self.latency.get_max_value() / 1000.0, 3),
            "service_p50_ms": round(self.service.get_value_at_percentile(50) / 1000.0, 3),
            "service_p99_ms": round(self.service.get_value_at_percentile(99) / 1000.0, 3),
            "send_lag_p99_ms": round(self.send_lag.get_value_at_percentile(99) / 1000.0, 3),
            "send_lag_max_ms": round(self.send_lag.get_max_value() / 1000.0, 3),
            "client_bound": self.client_bound,
            "balance": self.balance,
            "calls_by_process": dict(sorted(self.by_process.items())),
            "timeline": [
                {"t": i, "count": h.get_total_count(),
                 "p50_ms": round(h.get_value_at_percentile(50) / 1000, 3),
                 "p99_ms": round(h.get_value_at_percentile(99) / 1000, 3),
                 "max_ms": round(h.get_max_value() / 1000, 3)}
                for i, h in enumerate(self.per_second)
            ],
        }
        return out

    def summary(self) -> str:
        r = self.report()
        errs = ", ".join(f"{c}={n}" for c, n in r["errors_by_code"].items()) or "none"
        return (
            f"{self.target} @ {self.address}: target {self.target_rps:g} rps, achieved "
            f"{r['achieved_rps']:.1f} rps over {self.duration_s:g}s ({self.requests} requests)\n"
            f"  latency ms: p50 {r['p50_ms']:.3f}  p90 {r['p90_ms']:.3f}  p99 {r['p99_ms']:.3f}  "
            f"p99.9 {r['p999_ms']:.3f}  max {r['max_ms']:.3f}\n"
            f"  errors: {errs}   degraded rate: {r['degraded_rate']:.4f}   "
            f"generator send lag p99 {r['send_lag_p99_ms']:.3f} ms"
            + ("\n  WARNING: the load generator could not keep its schedule (client-bound)"
               if self.client_bound else "")
        )


ProgressFn = Callable[[int, LoadResult], None]


async def open_loop(
    target: str | TargetSpec,
    address: str,
    rps: float,
    duration_s: float,
    make_request: Callable[[int], Any] | None = None,
    *,
    timeout_s: float = 1.0,
    channels: int = 4,
    max_inflight: int = 20_000,
    warmup_requests: int = 50,
    connect_timeout_s: float = 5.0,
    progress: ProgressFn | None = None,
    balance: str = "channel",
    processes: int | None = None,
) -> LoadResult:
    """Run the open-loop schedule inside the running event loop (see module doc)."""
    spec = TARGETS[target] if isinstance(target, str) else target
    if rps <= 0 or duration_s <= 0:
        raise LoadTestError(f"need rps > 0 and duration > 0, got rps={rps} duration={duration_s}")
    if channels < 1:
        raise LoadTestError(f"need channels >= 1, got {channels}")
    if balance not in BALANCES:
        raise LoadTestError(f"balance must be one of {', '.join(BALANCES)}, got {balance!r}")
    if processes is not None and not 1 <= processes <= channels:
        raise LoadTestError(f"need 1 <= processes <= channels, got processes={processes} "
                            f"channels={channels}")
    parse_address(address)
    if make_request is None:
        make_request = echo_requests() if spec.name == "echo" else recommend_requests()

    def serialize(m: Any) -> bytes:
        return m if isinstance(m, bytes) else bytes(m.SerializeToString())

    # BDP pings off, as on the server (online.server.GRPC_OPTIONS): fewer wake-ups per call
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0), ("grpc.http2.bdp_probe", 0)]
    chans = [grpc.aio.insecure_channel(address, options=options) for _ in range(channels)]

    def call_of(c: Any) -> Any:
        return c.unary_unary(spec.method, request_serializer=serialize,
                             response_deserializer=spec.response_deserializer)
    try:
        try:
            await asyncio.wait_for(
                asyncio.gather(*(c.channel_ready() for c in chans)), connect_timeout_s
            )
        except TimeoutError:
            raise LoadTestError(
                f"cannot reach a gRPC server at {address} within {connect_timeout_s:g}s "
                "(is it running? check --address)"
            ) from None
        calls = [call_of(c) for c in chans]
        for j in range(warmup_requests):  # connections, caches and code paths warm
            try:
                await calls[j % channels](make_request(j), timeout=max(timeout_s, 5.0))
            except grpc.aio.AioRpcError as exc:
                if exc.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE):
                    raise LoadTestError(
                        f"{address} cannot serve {spec.method}: {exc.code().name} "
                        f"{exc.details()}"
                    ) from None
        groups = None
        served_by = spec.served_by
        if balance == "process" and served_by is not None and warmup_requests > 0:
            async def reached(j: int) -> str | None:
                """The process that channel j's call reached (None: the call failed)."""
                try:
                    return served_by(await calls[j](make_request(j), timeout=max(timeout_s, 5.0)))
                except grpc.aio.AioRpcError:
                    return None

            def open_channel() -> int:
                chans.append(grpc.aio.insecure_channel(address, options=options))
                calls.append(call_of(chans[-1]))
                return len(calls) - 1
            by_process = await _processes(len(calls), reached)
            groups = list(by_process.values()) if processes is None else await _spread(
                by_process, processes, channels, reached, open_channel)
        return await _schedule(spec, address, rps, duration_s, make_request, calls,
                               timeout_s, max_inflight, progress, groups)
    finally:
        await asyncio.gather(*(c.close() for c in chans), return_exceptions=True)


async def _processes(n: int, reached: Callable[[int], Awaitable[str | None]]
                     ) -> dict[str, list[int]]:
    """Channels 0..n-1 grouped by the server process they reach: one call on each, one after
    the other (no burst at start); a channel whose call fails is a group of its own ("?j")."""
    groups: dict[str, list[int]] = {}
    for j in range(n):
        name = await reached(j)
        groups.setdefault(f"?{j}" if name is None else name, []).append(j)
    return groups


async def _spread(groups: dict[str, list[int]], processes: int, channels: int,
                  reached: Callable[[int], Awaitable[str | None]], open_channel: Callable[[], int]
                  ) -> list[list[int]]:
    """``channels // processes`` channels for each of ``processes`` server processes: more
    connections are opened (``open_channel``, up to 8 x ``channels`` in all) while a process
    has fewer, and each process's first ones are used. ``LoadTestError`` if fewer processes
    answer: the load would miss one."""
    share = channels // processes
    found = {name: g for name, g in groups.items() if not name.startswith("?")}
    opened = sum(map(len, groups.values()))

    def short() -> bool:
        return len(found) < processes or any(len(g) < share for g in found.values())
    while short() and opened < 8 * channels:
        j = open_channel()
        opened += 1
        name = await reached(j)
        if name is not None:
            found.setdefault(name, []).append(j)
    if len(found) < processes:
        raise LoadTestError(f"{opened} connections reached {len(found)} server "
                            f"process(es), not the {processes} expected")
    return [g[:share] for g in found.values()]


async def _schedule(
    spec: TargetSpec, address: str, rps: float, duration_s: float,
    make_request: Callable[[int], Any], calls: list[Any], timeout_s: float,
    max_inflight: int, progress: ProgressFn | None, groups: list[list[int]] | None = None,
) -> LoadResult:
    n = max(1, round(rps * duration_s))
    res = LoadResult(spec.name, address, rps, duration_s, requests=n,
                     balance="process" if groups else "channel")
    res.per_second = [new_histogram() for _ in range(max(1, math.ceil(duration_s)))]
    interval = 1.0 / rps
    clock = time.monotonic
    inflight: set[asyncio.Task[None]] = set()
    busy = [0] * len(calls)  # calls in flight per channel
    is_degraded, served_by = spec.is_degraded, spec.served_by
    group_of = {c: g for g, chans in enumerate(groups or ()) for c in chans}
    in_group = [0] * len(groups or ())  # calls in flight per server process
    turn = [0] * len(groups or ())  # next channel of each process (round robin)

    def pick(i: int) -> int:
        if groups:  # least request over processes, ties in turn; their channels in turn
            g = min(range(len(groups)), key=lambda x: (in_group[x], (x - i) % len(groups)))
            turn[g] += 1
            return groups[g][turn[g] % len(groups[g])]
        c = i % len(busy)  # round robin, unless that channel is busy: then the least busy
        return min(range(len(busy)), key=busy.__getitem__) if busy[c] else c
    t0 = clock() + 0.02
    window_end = t0 + duration_s

    async def one(i: int, scheduled: float) -> None:
        code = "OK"
        sent = clock()
        record_us(res.send_lag, max(0.0, sent - scheduled) * 1e6)
        c = pick(i)
        g = group_of.get(c)
        busy[c] += 1
        if g is not None:
            in_group[g] += 1
        try:
            resp = await calls[c](make_request(i), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except asyncio.CancelledError:
            code = "CANCELLED_AT_END"
        except Exception as exc:  # noqa: BLE001 - a bad request factory must not vanish
            code = f"CLIENT_{type(exc).__name__}"
        busy[c] -= 1
        if g is not None:
            in_group[g] -= 1
        done = clock()
        lat_us = (done - scheduled) * 1e6
        record_us(res.latency, lat_us)
        record_us(res.service, (done - sent) * 1e6)
        record_us(res.per_second[min(int(scheduled - t0), len(res.per_second) - 1)], lat_us)
        if code == "OK":
            res.ok += 1
            if done <= window_end:
                res.ok_in_window += 1
            if is_degraded is not None and is_degraded(resp):
                res.degraded += 1
            if served_by is not None:
                res.by_process[served_by(resp)] += 1
        else:
            res.errors_by_code[code] += 1

    i = 0
    next_report = t0 + 1.0
    while i < n:
        now = clock()
        due = min(n, math.floor((now - t0) * rps) + 1)  # floor: never send early
        while i < due:
            scheduled = t0 + i * interval
            if len(inflight) >= max_inflight:
                res.errors_by_code[CLIENT_BACKLOG] += 1
            else:
                task = asyncio.create_task(one(i, scheduled))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                res.sent += 1
            i += 1
        if progress is not None and now >= next_report:
            progress(int(now - t0), res)
            next_report += 1.0
        delay = t0 + i * interval - clock()
        await asyncio.sleep(delay if delay > 0 else 0)
    if inflight:
        _done, pending = await asyncio.wait(set(inflight), timeout=timeout_s + 2.0)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    res.elapsed_s = clock() - t0
    return res


def run_open_loop(
    target: str | TargetSpec,
    address: str,
    rps: float,
    duration_s: float,
    make_request: Callable[[int], Any] | None = None,
    **kwargs: Any,
) -> LoadResult:
    """Synchronous wrapper of ``open_loop`` (its own event loop); see the module doc."""
    return asyncio.run(open_loop(target, address, rps, duration_s, make_request, **kwargs))
