"""Metrics endpoints: the ``metrics_host`` setting is honoured, and the compose Prometheus
scrapes every recsys process at the port its settings give it."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys.embedded.redis_server import free_port
from recsys.metrics_endpoint import start_metrics
from recsys.settings import SettingsError, load_settings
from streams.runner import FLOWS
from tests.compose_files import RECSYS_SERVICES, ROOT, SERVICES, parse_cli, settings_of

PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
PORT_SETTING = {"serve": "serve_metrics_port", "sim": "sim_metrics_port"}


def _metrics_port_setting(argv: list[str]) -> str | None:
    args = parse_cli(argv)
    if args.command == "stream":
        return FLOWS[args.flow][2]
    return PORT_SETTING.get(args.command)


def _targets() -> dict[str, str]:
    """job name -> its one target (host:port)."""
    doc: dict[str, Any] = yaml.safe_load(PROMETHEUS_FILE.read_text())
    out = {}
    for job in doc["scrape_configs"]:
        (static,) = job["static_configs"]
        (target,) = static["targets"]
        out[job["job_name"]] = target
    return out


def _scrape(host: str, port: int) -> bytes:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as r:
        return bytes(r.read())


def test_metrics_bind_where_the_setting_says():
    port = free_port()
    url = start_metrics(load_settings(env={"RECSYS_METRICS_HOST": "127.0.0.2"}), port)
    assert url == f"http://127.0.0.2:{port}/metrics"
    assert b"python_info" in _scrape("127.0.0.2", port)
    with pytest.raises(urllib.error.URLError):  # bound to 127.0.0.2 only, not the default
        _scrape("127.0.0.1", port)
    with pytest.raises(SettingsError, match="metrics_host"):
        load_settings(env={"RECSYS_METRICS_HOST": " "})


def test_prometheus_scrapes_every_recsys_process_at_its_metrics_port():
    targets = _targets()
    scraped = {t.rsplit(":", 1)[0]: int(t.rsplit(":", 1)[1]) for t in targets.values()}
    for name, argv in sorted(RECSYS_SERVICES.items()):
        setting = _metrics_port_setting(argv)
        if setting is None:
            continue
        s = settings_of(name)
        port = getattr(s, setting)
        assert port, f"service {name!r} serves no metrics ({setting} is 0)"
        assert s.metrics_host == "0.0.0.0", f"service {name!r} binds metrics to {s.metrics_host}"
        assert scraped.get(name) == port, f"prometheus does not scrape {name}:{port} (targets {targets})"
    assert set(scraped) <= set(RECSYS_SERVICES), f"prometheus scrapes unknown services: {scraped}"


def test_prometheus_service_mounts_the_scrape_config():
    prom = SERVICES["prometheus"]
    mounts = [v.split(":") for v in prom["volumes"] if isinstance(v, str)]
    config = [m for m in mounts if m[1] == "/etc/prometheus/prometheus.yml"]
    assert config and (ROOT / Path(config[0][0])).resolve() == PROMETHEUS_FILE
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
