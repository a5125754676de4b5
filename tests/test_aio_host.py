"""The gRPC server host (``online.aio_host``) on each event loop it offers: calls are answered
concurrently, health and reflection work, and it stops cleanly."""

from __future__ import annotations

import asyncio
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from online.aio_host import EVENT_LOOPS, new_event_loop
from proto import recommend_pb2, recommend_pb2_grpc
from recsys.bench.echo import ECHO_SERVICE, make_echo_server


@pytest.mark.parametrize("loop", EVENT_LOOPS)
def test_echo_server_answers_on_each_event_loop(loop: str) -> None:
    server = make_echo_server(port=0, loop=loop)
    assert server.loop_name == loop
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            echo = recommend_pb2_grpc.EchoServiceStub(ch)
            payloads = [bytes([i]) * (i + 1) for i in range(64)]
            with futures.ThreadPoolExecutor(8) as pool:  # calls in flight together
                got = list(pool.map(
                    lambda p: echo.Echo(recommend_pb2.EchoRequest(payload=p), timeout=10).payload,
                    payloads))
            assert got == payloads
            status = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=ECHO_SERVICE), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(grace=0.5)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch, pytest.raises(grpc.RpcError) as err:
        recommend_pb2_grpc.EchoServiceStub(ch).Echo(recommend_pb2.EchoRequest(payload=b"x"), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_uvloop_is_what_runs_by_default() -> None:
    """uvloop is a dependency (Linux): the default loop must not fall back to asyncio's."""
    loop = new_event_loop()
    try:
        assert not isinstance(loop, asyncio.BaseEventLoop)  # libuv's loop, not asyncio's own
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()


def test_an_unknown_event_loop_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="event loop must be one of"):
        new_event_loop("trio")
