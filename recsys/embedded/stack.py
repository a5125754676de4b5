"""The embedded broker and redis-server for a self-contained run (benchmarks): started only
for the addresses the settings leave empty, stopped on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from core.settings import Settings
from recsys.embedded.broker import EmbeddedBroker
from recsys.embedded.redis_server import RedisServer


@contextmanager
def embedded_stack(settings: Settings, data_dir: Path) -> Iterator[Settings]:
    """Yields ``settings`` with ``kafka_bootstrap`` / ``redis_url`` filled in."""
    broker = redis = None
    try:
        if not settings.kafka_bootstrap:
            broker = EmbeddedBroker(settings)
            settings = settings.replace(kafka_bootstrap=broker.bootstrap)
        if not settings.redis_url:
            redis = RedisServer(Path(data_dir) / "redis", persist=False)
            settings = settings.replace(redis_url=redis.url)
        yield settings
    finally:
        if redis is not None:
            redis.stop()
        if broker is not None:
            broker.close()
