"""Metrics endpoints: the ``metrics_host`` setting is honoured, and the compose Prometheus
scrapes every recsys process at the port its settings give it, and nothing else: every scrape
target is a metrics port that a service serves (and its image exposes)."""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.metrics_endpoint import start_metrics
from core.settings import SettingsError, load_settings
from recsys.embedded.redis_server import free_port
from streams.runner import FLOWS
from tests.compose_files import (
    COMPOSE,
    ROOT,
    SERVICES,
    dockerfile_instructions,
    dockerfile_of,
    final_stage,
    parse_cli,
    recsys_argv,
    settings_of,
    started_by_default,
)

PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
# the metrics port setting of each subcommand that serves metrics (`stream`: per flow, FLOWS);
# `retrain` serves none
PORT_SETTING = {"serve": "serve_metrics_port", "sim": "sim_metrics_port"}


def _metrics_port_setting(argv: list[str]) -> str | None:
    args = parse_cli(argv)
    if args.command == "stream":
        return FLOWS[args.flow][2]
    return PORT_SETTING.get(args.command)


def _prometheus() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(PROMETHEUS_FILE.read_text())
    return doc


def _targets(prometheus: dict[str, Any]) -> list[tuple[str, str]]:
    """(job name, host:port) of every static scrape target."""
    return [(job["job_name"], str(target)) for job in prometheus.get("scrape_configs") or []
            for static in job.get("static_configs") or [] for target in static.get("targets") or []]


def _exposed(svc: dict[str, Any]) -> set[int]:
    """Ports the service's container declares: its image's EXPOSE and the service's `expose`."""
    ports = {int(str(p).split("/")[0]) for p in svc.get("expose") or []}
    if svc.get("build"):
        _base, stage = final_stage(dockerfile_instructions(dockerfile_of(svc)[1]))
        ports |= {int(p.split("/")[0]) for i in stage if i.keyword == "EXPOSE" for p in i.args.split()}
    return ports


def metrics_ports(compose: dict[str, Any]) -> dict[str, tuple[str, list[int]]]:
    """service -> (its metrics port setting, the ports it serves metrics on), for every recsys
    service compose starts whose command serves metrics."""
    services = compose["services"]
    out = {}
    for name, svc in services.items():
        argv = recsys_argv(svc)
        if argv is None or not started_by_default(svc) or (setting := _metrics_port_setting(argv)) is None:
            continue
        s = settings_of(name, services)
        port: int = getattr(s, setting)
        args = parse_cli(argv)
        # `recsys serve --workers N`: worker i serves metrics on serve_metrics_port + i
        workers = (args.workers or s.serve_workers) if args.command == "serve" else 1
        out[name] = (setting, [port + i for i in range(workers)] if port else [])
    return out


def scrape_problems(compose: dict[str, Any], prometheus: dict[str, Any]) -> list[str]:
    """Every recsys process that serves metrics is scraped there (on all interfaces), and every
    scrape target is a service's metrics port, exposed by its container."""
    services = compose["services"]
    serving = metrics_ports(compose)
    targets = _targets(prometheus)
    scraped = {(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for _job, t in targets}
    problems = []
    for name, (setting, ports) in sorted(serving.items()):
        if not ports:
            problems.append(f"service {name!r} serves no metrics ({setting} is 0)")
        host = settings_of(name, services).metrics_host
        if host != "0.0.0.0":
            problems.append(f"service {name!r} binds metrics to {host}: prometheus cannot reach it")
        problems += [f"prometheus does not scrape {name}:{port} ({setting})"
                     for port in ports if (name, port) not in scraped]
    for job, target in targets:
        host, port = target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])
        if host not in services:
            problems.append(f"job {job!r} scrapes {target}: {host} is not a compose service")
        elif port not in serving.get(host, ("", []))[1]:
            problems.append(f"job {job!r} scrapes {target}, but {host} serves metrics on "
                            f"{serving[host][1] if host in serving else 'no port'}")
        elif port not in _exposed(services[host]):
            problems.append(f"job {job!r} scrapes {target}: port {port} is not exposed by {host}'s "
                            "container (image EXPOSE or service `expose`)")
    return problems


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
    problems = scrape_problems(COMPOSE, _prometheus())
    assert not problems, f"{PROMETHEUS_FILE.name} vs docker-compose.yml:\n  " + "\n  ".join(problems)


def _scrape_mutations() -> list[tuple[str, Any, str]]:
    def drop_job(_compose: dict[str, Any], prom: dict[str, Any]) -> None:
        prom["scrape_configs"] = [j for j in prom["scrape_configs"] if j["job_name"] != "embeddings"]

    def wrong_port(_compose: dict[str, Any], prom: dict[str, Any]) -> None:
        prom["scrape_configs"].append({"job_name": "x", "static_configs": [{"targets": ["labels:9105"]}]})

    def no_metrics(_compose: dict[str, Any], prom: dict[str, Any]) -> None:
        prom["scrape_configs"].append({"job_name": "x", "static_configs": [{"targets": ["retrain:9106"]}]})

    def unexposed(compose: dict[str, Any], prom: dict[str, Any]) -> None:
        compose["services"]["sim"]["environment"]["RECSYS_SIM_METRICS_PORT"] = "9199"
        for job in prom["scrape_configs"]:
            if job["job_name"] == "sim":
                job["static_configs"] = [{"targets": ["sim:9199"]}]

    return [("a process not scraped", drop_job, "does not scrape embeddings:9105"),
            ("a target at another port", wrong_port, "labels serves metrics on [9104]"),
            ("a target at a process without metrics", no_metrics, "retrain serves metrics on no port"),
            ("a target at an unexposed port", unexposed, "port 9199 is not exposed")]


@pytest.mark.parametrize(("label", "mutate", "expect"), _scrape_mutations(),
                         ids=[m[0] for m in _scrape_mutations()])
def test_scrape_check_rejects(label: str, mutate: Any, expect: str) -> None:
    compose, prom = copy.deepcopy(COMPOSE), _prometheus()
    mutate(compose, prom)
    problems = scrape_problems(compose, prom)
    assert any(expect in p for p in problems), f"{label}: expected {expect!r} in {problems}"


def test_prometheus_service_mounts_the_scrape_config():
    prom = SERVICES["prometheus"]
    mounts = [v.split(":") for v in prom["volumes"] if isinstance(v, str)]
    config = [m for m in mounts if m[1] == "/etc/prometheus/prometheus.yml"]
    assert config and (ROOT / Path(config[0][0])).resolve() == PROMETHEUS_FILE
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
