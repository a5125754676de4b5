"""`recsys bench stream` on a tiny size: the report has every key, with figures from this run
(the speed itself is measured by the benchmark, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def test_small_run_reports_every_key(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    out = subprocess.run(
        [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(tmp_path), "bench", "stream",
         "--events", "3000", "--users", "100", "--items", "50", "--rate", "200", "--freshness-s", "3",
         "--report", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r = json.loads(report.read_text())
    assert (r["events"], r["users"], r["items"]) == (3000, 100, 50)
    assert r["dataflow_events_per_s"] > 0 and r["raw_consume_events_per_s"] > 0
    assert r["ratio"] > 0
    assert r["dataflow_cpu_us_per_event"] > 0
    assert r["freshness_events"] > 0 and 0 < r["freshness_p50_ms"] <= r["freshness_p99_ms"]
