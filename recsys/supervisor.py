"""Supervised child processes and Prometheus scraping, for `recsys up` and `recsys lag`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int, timeout: float = 1.0) -> Samples:
    """name -> [(labels, value)] from a Prometheus endpoint on localhost; {} if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: Samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def total(samples: Samples, name: str, **match: str) -> float:
    return sum(v for labels, v in samples.get(name, [])
               if all(labels.get(k) == want for k, want in match.items()))


def maximum(samples: Samples, name: str) -> float:
    return max((v for _labels, v in samples.get(name, [])), default=0.0)


def histogram_quantile(q: float, now: Samples, before: Samples, name: str) -> float | None:
    """Quantile (seconds) of observations between two scrapes, from cumulative buckets."""
    def buckets(s: Samples) -> dict[float, float]:
        return {float(lab["le"]): v for lab, v in s.get(f"{name}_bucket", [])}
    cur, prev = buckets(now), buckets(before)
    if not cur:
        return None
    deltas = sorted((le, v - prev.get(le, 0.0)) for le, v in cur.items())
    count = deltas[-1][1]
    if count <= 0:
        return None
    target, lo_edge, lo_count = q * count, 0.0, 0.0
    for le, c in deltas:
        if c >= target:
            if le == float("inf"):
                return lo_edge
            span = c - lo_count
            frac = (target - lo_count) / span if span > 0 else 1.0
            return lo_edge + (le - lo_edge) * frac
        lo_edge, lo_count = le, c
    return lo_edge


@dataclass
class Child:
    """One supervised `recsys` subcommand; output goes to a log file."""

    name: str
    argv: list[str]
    log_path: Path
    restartable: bool = True
    max_restarts: int = 3
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = field(default=0.0)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.started_at = time.monotonic()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT (clean shutdown), then SIGTERM, then SIGKILL."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()


def recsys_argv(global_args: list[str], *sub: str) -> list[str]:
    return [sys.executable, "-m", "recsys.cli.main", *global_args, *sub]


def wait_until(pred: Callable[[], bool], timeout: float, what: str, child: Child | None = None,
               interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        if child is not None and not child.alive():
            raise RuntimeError(f"{child.name} exited while waiting for {what}:\n{child.tail()}")
        time.sleep(interval)
    tail = f"\n{child.tail()}" if child is not None else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")
