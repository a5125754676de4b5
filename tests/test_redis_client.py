"""Every Redis client authenticates with ``RECSYS_REDIS_PASSWORD`` (``core.redis_client``).

A real ``redis-server`` with ``requirepass``: the scorer (its store and item changelog
follower), the feature and embedding sinks and the ANN follower reach it with the password
setting, and without it get an authentication error instead of silently working.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from core.redis_client import redis_client
from core.settings import Settings, SettingsError, load_settings
from features.writes import Write
from online.ann.follower import IndexFollower
from online.server import build_server
from online.store import RedisStore
from proto import recommend_pb2, recommend_pb2_grpc
from proto.keys import Keys
from recsys.embedded.redis_server import find_redis_server, free_port
from streams.embeddings import I2V, VecOp
from streams.embeddings_flow import EmbeddingSink
from streams.redis_sink import RedisSink

PASSWORD = "s3cret-pw"
PREFIX = "auth"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server that requires a password; yields its URL (no password in it)."""
    data = tmp_path_factory.mktemp("locked-redis")
    port = free_port()
    proc = subprocess.Popen(
        [find_redis_server(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
         "--daemonize", "no", "--save", "", "--appendonly", "no", "--loglevel", "warning",
         "--requirepass", PASSWORD],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    probe = redis.Redis(port=port, password=PASSWORD, socket_timeout=0.5)
    deadline = time.monotonic() + 15
    while True:
        try:
            if probe.ping():
                break
        except redis.RedisError as exc:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                err = proc.stderr.read() if proc.stderr else b""
                raise RuntimeError(f"redis-server did not start: {err!r}") from exc
            time.sleep(0.05)
    probe.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture()
def with_pw(locked_redis: str, tmp_path: Path) -> Settings:
    """Settings carrying the password the way a deployment does: ``RECSYS_REDIS_PASSWORD``."""
    return load_settings(env={"RECSYS_REDIS_URL": locked_redis, "RECSYS_REDIS_PASSWORD": PASSWORD},
                         state_dir=str(tmp_path), redis_prefix=PREFIX, ann_enabled=False,
                         serve_metrics_port=0, explore_epsilon=0.0)


@pytest.fixture()
def without_pw(with_pw: Settings) -> Settings:
    return with_pw.replace(redis_password="")


@pytest.fixture()
def admin(with_pw: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(with_pw.redis_url, password=PASSWORD)
    client.flushdb()
    yield client
    client.close()


def test_the_factory_authenticates_with_the_password_setting(with_pw: Settings, without_pw: Settings
                                                            ) -> None:
    assert redis_client(with_pw, timeout_s=2).ping()
    direct = Settings(redis_url=with_pw.redis_url, redis_password=PASSWORD)  # Settings(**kw) too
    assert redis_client(direct, timeout_s=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_client(without_pw, timeout_s=2).ping()
    with pytest.raises(redis.AuthenticationError):
        redis_client(with_pw.replace(redis_password="wrong"), timeout_s=2).ping()
    assert PASSWORD not in repr(with_pw) and PASSWORD not in str(with_pw.redacted())


def test_tls_ca_file_needs_a_rediss_url(with_pw: Settings, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    with pytest.raises(SettingsError, match="rediss://"):
        redis_client(with_pw.replace(redis_tls_ca_file=str(ca)), timeout_s=2)
    tls = with_pw.replace(redis_url=with_pw.redis_url.replace("redis://", "rediss://"),
                          redis_tls_ca_file=str(ca))
    client = redis_client(tls, timeout_s=2)  # connects lazily: only the options are checked here
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(ca)


def test_scorer_store_authenticates(with_pw: Settings, without_pw: Settings, admin: redis.Redis) -> None:
    keys = Keys(prefix=PREFIX)
    admin.zadd(keys.popular(), {"i1": 3.0, "i2": 1.0})
    store = RedisStore(with_pw.redis_url, keys, 500, settings=with_pw)
    assert [item for item, _ in store.popular(2)] == ["i1", "i2"]
    locked_out = RedisStore(without_pw.redis_url, keys, 500, settings=without_pw)
    with pytest.raises(redis.RedisError, match=r"NOAUTH|[Aa]uthenticat"):
        locked_out.popular(2)


def _recommend(settings: Settings) -> recommend_pb2.RecommendResponse:
    srv = build_server(settings, port=0, log_impressions=False)
    try:
        stub = recommend_pb2_grpc.RecommendServiceStub(grpc.insecure_channel(f"127.0.0.1:{srv.port}"))
        return stub.Recommend(recommend_pb2.RecommendRequest(user_id="u1", k=2), timeout=5)
    finally:
        srv.stop(0)


def test_the_scorer_serves_from_a_password_protected_redis(with_pw: Settings, without_pw: Settings,
                                                           admin: redis.Redis) -> None:
    resp = _recommend(with_pw)
    assert not resp.degraded, resp.degraded_reason
    resp = _recommend(without_pw)
    assert resp.degraded and ("NOAUTH" in resp.degraded_reason
                              or "uthenticat" in resp.degraded_reason), resp.degraded_reason


def test_feature_sink_authenticates(with_pw: Settings, without_pw: Settings, admin: redis.Redis) -> None:
    key = f"{PREFIX}:sink-probe"
    part = RedisSink(with_pw.redis_url, with_pw).build("redis_state", 0, 1)
    try:
        part.write_batch([Write("set", key, b"v1")])
    finally:
        part.close()
    assert admin.get(key) == b"v1"
    locked_out = RedisSink(without_pw.redis_url, without_pw).build("redis_state", 0, 1)
    t0 = time.monotonic()
    with pytest.raises(redis.AuthenticationError):
        locked_out.write_batch([Write("set", key, b"v2")])
    assert time.monotonic() - t0 < 1.0  # not retried as if the connection had dropped
    locked_out.close()
    assert admin.get(key) == b"v1"


def test_embedding_sink_and_ann_follower_authenticate(with_pw: Settings, without_pw: Settings,
                                                      admin: redis.Redis) -> None:
    vec = np.ones((1, 8), dtype=np.float32)
    part = EmbeddingSink(with_pw.redis_url, with_pw, PREFIX).build("embedding_store", 0, 1)
    try:
        part.write_batch([VecOp(I2V, "put", ("e1",), vec, 1)])
    finally:
        part.close()
    assert admin.keys(f"{PREFIX}*"), "the embedding sink wrote nothing"
    locked_out = EmbeddingSink(without_pw.redis_url, without_pw, PREFIX).build("embedding_store", 0, 1)
    with pytest.raises(redis.AuthenticationError):
        locked_out.write_batch([VecOp(I2V, "put", ("e2",), vec, 2)])
    locked_out.close()

    assert IndexFollower.from_settings(with_pw, 8, registry=CollectorRegistry()).client.ping()
    with pytest.raises(redis.AuthenticationError):
        IndexFollower.from_settings(without_pw, 8, registry=CollectorRegistry()).client.ping()
