"""The request path's hand-packed Redis wire, against a real redis-server."""

from __future__ import annotations

import pytest
import redis

from online.redis_wire import Wire, pack
from online.store import _score_pairs


def test_pack_is_the_resp_redis_py_sends():
    from redis.connection import Connection

    cmds = [("SET", "k:ü", b"\x00\xffv"), ("ZREVRANGE", "z", 0, -1, "WITHSCORES"), ("INCRBYFLOAT", "f", 0.1)]
    assert pack(cmds) == b"".join(Connection().pack_commands(cmds))


def test_replies_errors_and_timeouts(redis_client: redis.Redis):
    wire = Wire(redis_client)
    redis_client.zadd("wire:z", {"a": 2.0, "b": 1.0})
    redis_client.set("wire:s", "ü")
    got = wire.roundtrip([("GET", "wire:s"), ("ZREVRANGE", "wire:z", 0, -1, "WITHSCORES"),
                          ("GET", "wire:missing"), ("SMEMBERS", "wire:none")])
    assert got[0].decode() == "ü" and got[2] is None and got[3] == []
    assert _score_pairs(got[1]) == [("a", 2.0), ("b", 1.0)]  # RESP2 flat or RESP3 nested
    # an error reply raises once every reply is read: the connection stays in step
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        wire.roundtrip([("GET", "wire:z"), ("GET", "wire:s")])
    assert not wire.broken and wire.roundtrip([("GET", "wire:s")]) == ["ü".encode()]
    # no answer within the timeout: redis-py's TimeoutError, and the connection is dropped
    with pytest.raises(redis.TimeoutError):
        wire.roundtrip([("BLPOP", "wire:empty", 2)], timeout_s=0.2)
    assert wire.broken
    with Wire(redis_client) as fresh:
        assert fresh.roundtrip([("GET", "wire:s")]) == ["ü".encode()]


def test_a_closed_server_side_is_a_connection_error(redis_client: redis.Redis):
    wire = Wire(redis_client)
    wire.roundtrip([("CLIENT", "SETNAME", "wire-victim")])
    for c in redis_client.client_list():
        if c.get("name") == "wire-victim":
            redis_client.client_kill_filter(_id=c["id"])
    with pytest.raises(redis.ConnectionError):
        wire.roundtrip([("GET", "wire:s")])
    assert wire.broken
