"""Session-scoped real infrastructure: a real redis-server and the embedded Kafka broker.

No fakes: the broker is `recsys broker` (librdkafka mock cluster, reached over TCP by the
normal clients) in a subprocess, redis is a real `redis-server`. Each test isolates itself
with its own topic prefix and Redis key prefix (the `settings` fixture).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core import kafka
from core.settings import Settings, load_settings, settings_to_env
from recsys.embedded.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"  # the real public datasets, beside the repository
TEST_DEADLINE_MS = 30_000.0


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def broker(stack_dir: Path) -> Iterator[dict]:
    """`recsys broker` running in a subprocess; yields its published info."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECSYS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(stack_dir), "broker"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    info_path = stack_dir / "broker.json"
    deadline = time.monotonic() + 30
    while not info_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out = proc.stdout.read().decode() if proc.stdout else ""
            proc.kill()
            raise RuntimeError(f"embedded broker did not start: {out}")
        time.sleep(0.05)
    yield json.loads(info_path.read_text())
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def redis_server(stack_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(stack_dir / "redis", persist=False)
    yield server
    server.stop()


@pytest.fixture()
def settings(broker: dict, redis_server: RedisServer, stack_dir: Path) -> Settings:
    """Settings isolated to this test: own topics (created) and own Redis key prefix."""
    tag = uuid.uuid4().hex[:8]
    s = load_settings(
        env={},
        state_dir=str(stack_dir),
        kafka_bootstrap=broker["bootstrap"],
        redis_url=redis_server.url,
        topic_prefix=f"t{tag}.",
        redis_prefix=f"t{tag}",
        partitions=2,
        stream_recovery=False,
        stream_metrics_port=0,
        serve_metrics_port=0,
        sim_metrics_port=0,
        labels_metrics_port=0,
        embeddings_metrics_port=0,
        grpc_port=0,
        # scorer tests assert behaviour, not speed: a deadline no stalled 2-core VM hits by
        # accident (the production deadline path has its own test, with a stage made late)
        request_deadline_ms=TEST_DEADLINE_MS,
    )
    kafka.ensure_topics(s, s.all_topics(), s.partitions)
    return s


@pytest.fixture()
def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that gives a subprocess exactly these settings (RECSYS_* variables)."""
    return settings_to_env(s)
