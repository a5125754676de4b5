"""Dataset replay and the synthetic producer against the real embedded broker: what lands on
the clickstream topic is decoded and checked (count, order per user, content, pacing)."""

from __future__ import annotations

import gzip
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from core import kafka
from core.settings import Settings
from proto import events_pb2
from sim.produce import produce
from sim.replay import ReplayError, open_dataset, replay
from tests.conftest import DATA, ROOT

TIMED = DATA / "retailrocket_views" / "test_sessions_item_ts.jsonl.gz"
UNTIMED = DATA / "yoochoose_1_64" / "train_sessions.txt.gz"
needs_data = pytest.mark.skipif(not TIMED.is_file() or not UNTIMED.is_file(),
                                reason="shared datasets not present")


Record = tuple[bytes | None, events_pb2.Event]


def consume_all(settings: Settings, expected: int, timeout_s: float = 30.0) -> list[Record]:
    """Every (key, Event) on the clickstream topic, in partition order."""
    topic = settings.topic("clickstream")
    c = kafka.consumer(settings, f"test-{uuid.uuid4().hex[:8]}")
    parts = kafka.high_watermarks(c, topic)
    assert parts, f"topic {topic} not found"
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])  # no group join
    out: list[Record] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in c.consume(1000, timeout=0.2):
                assert msg.error() is None, msg.error()
                ev = events_pb2.Event()
                ev.ParseFromString(msg.value())  # raises on an invalid protobuf
                out.append((msg.key(), ev))
        for msg in c.consume(1000, timeout=0.3):  # nothing more than expected
            out.append((msg.key(), events_pb2.Event.FromString(msg.value())))
    finally:
        c.close()
    return out


def first_events_by_time(n: int) -> list[tuple[int, int, int, str]]:
    """Independent reading of the timed file: the first n (ts_ms, session, pos, item)."""
    rows = []
    with gzip.open(TIMED, "rt") as fh:
        for k, line in enumerate(fh):
            for pos, (item, ts) in enumerate(json.loads(line)):
                rows.append((int(ts) * 1000, k, pos, str(item)))
    return sorted(rows)[:n]


@needs_data
def test_replay_real_retailrocket_slice(settings: Settings) -> None:
    n = 400
    want = first_events_by_time(n)
    span_s = (want[-1][0] - want[0][0]) / 1000.0
    speed = span_s / 1.0  # the slice should take about one second of wall time
    stats = replay(settings, TIMED.parent, speed=speed, limit=n, user_prefix="s")
    assert stats.produced == stats.delivered == n and stats.failed == 0
    assert 0.9 <= stats.elapsed_s <= 2.0, stats.report()  # paced by the original gaps
    assert len(stats.sessions) == len({w[1] for w in want})

    got = consume_all(settings, n)
    assert len(got) == n
    by_user: dict[str, list[int]] = defaultdict(list)
    for key, ev in got:
        assert key == ev.user_id.encode()
        assert ev.type == events_pb2.VIEW and ev.item_id and ev.event_id
        by_user[ev.user_id].append(ev.event_time_ms)
    for user, times in by_user.items():
        assert times == sorted(times), f"{user}: event times out of order"
    assert len({ev.event_id for _k, ev in got}) == n
    assert sorted((ev.event_time_ms, int(ev.user_id[1:]), ev.item_id) for _k, ev in got) == \
        sorted((ts, k, item) for ts, k, _pos, item in want)


@needs_data
def test_replay_untimed_srgnn_file_gets_fixed_synthetic_gaps(settings: Settings) -> None:
    n = 120
    stats = replay(settings, UNTIMED, speed=float("inf"), limit=n, gap_s=2.0)
    assert stats.produced == stats.delivered == n
    got = consume_all(settings, n)
    assert len(got) == n
    times = sorted(ev.event_time_ms for _k, ev in got)
    assert {b - a for a, b in itertools.pairwise(times)} == {2000}
    with gzip.open(UNTIMED, "rt") as fh:
        items = [it for line in fh for it in line.split()][:n]
    in_time_order = [ev.item_id for _k, ev in sorted(got, key=lambda kv: kv[1].event_time_ms)]
    assert in_time_order == items


def test_dataset_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match="no such dataset"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ReplayError, match="neither"):
        open_dataset(tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[[1, 1441939815]]\n{"not": "a list"}\n')
    with pytest.raises(ReplayError, match=r"bad.jsonl:2"):
        open_dataset(bad)


def test_produce_hits_the_rate_with_valid_unique_events(settings: Settings) -> None:
    rate, count = 2000.0, 4000
    stats = produce(settings, rate, count=count, users=50, items=100, seed=3)
    assert stats.produced == stats.delivered == count and stats.failed == 0
    assert abs(stats.rate - rate) <= 0.05 * rate, stats.report()
    got = consume_all(settings, count)
    assert len(got) == count
    assert len({ev.event_id for _k, ev in got}) == count
    types: dict[int, int] = defaultdict(int)
    for key, ev in got:
        assert key == ev.user_id.encode() and ev.user_id.startswith("u")
        assert ev.item_id.startswith("i") and ev.price > 0 and ev.context.surface
        types[ev.type] += 1
    assert types[events_pb2.VIEW] > 0.8 * count
    assert all(types[t] > 0 for t in (events_pb2.CLICK, events_pb2.ADD_TO_CART,
                                     events_pb2.PURCHASE))


@needs_data
def test_replay_cli_summary_and_exit_codes(settings: Settings, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "recsys.cli.main", "--state-dir", str(settings.state_dir),
            "--set", f"topic_prefix={settings.topic_prefix}",
            "--set", f"kafka_bootstrap={settings.kafka_bootstrap}", "replay"]
    report = tmp_path / "r.json"
    ok = subprocess.run([*base, str(TIMED), "--speed", "inf", "--limit", "50", "--quiet",
                         "--report", str(report)],
                        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "50 events" in ok.stdout
    assert json.loads(report.read_text())["events"] == 50
    missing = subprocess.run([*base, str(tmp_path / "nope")], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert missing.returncode == 2 and "no such dataset" in missing.stderr
