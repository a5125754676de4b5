"""Every process's Prometheus endpoint, started in one place.

The bind address is the ``metrics_host`` setting: ``127.0.0.1`` (default) keeps metrics on
the machine; ``0.0.0.0`` lets a Prometheus in another container scrape them (the Compose
file sets it). The local tools (`recsys up`, `recsys lag`, the benchmarks) scrape
``127.0.0.1``, which both of those binds answer.
"""

from __future__ import annotations

from prometheus_client import start_http_server

from core.settings import Settings


def start_metrics(settings: Settings, port: int) -> str:
    """Serve this process's metrics on ``port``; returns the URL for the log line."""
    start_http_server(port, addr=settings.metrics_host)
    return f"http://{settings.metrics_host}:{port}/metrics"


__all__ = ["start_metrics"]
