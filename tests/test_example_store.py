"""The trainer's copy of the training-examples topic (models.example_store), on the embedded
broker: incremental, nothing copied twice or skipped, and what the broker's retention dropped
before a copy is counted, not hidden."""

from __future__ import annotations

from collections import Counter

from confluent_kafka import TopicPartition

from core import kafka
from models.example_store import ExampleStore


def _produce(settings, values: list[bytes]) -> None:
    p = kafka.producer(settings)
    for i, v in enumerate(values):
        p.produce(settings.topic("training"), key=str(i % 7).encode(), value=v)
        if i % 500 == 0:
            p.poll(0)
    assert p.flush(10) == 0


def test_sync_copies_only_what_is_new(settings):
    store = ExampleStore.for_settings(settings)
    first = [f"a{i}".encode() for i in range(300)]
    _produce(settings, first)
    r1 = store.sync(settings)
    assert (r1.new, r1.lost, len(store.records())) == (300, 0, 300)
    assert Counter(store.records()) == Counter(first)
    again = store.sync(settings)  # nothing new on the topic: nothing appended
    assert (again.new, len(store.records())) == (0, 300)
    second = [f"b{i}".encode() for i in range(200)]
    _produce(settings, second)
    r2 = store.sync(settings)
    assert (r2.new, len(store.records())) == (200, 500)
    assert Counter(store.records()) == Counter(first + second)
    # a second store on the same folder (the next process) sees the same copy and offsets
    assert Counter(ExampleStore.for_settings(settings).records()) == Counter(first + second)


def test_a_torn_tail_is_not_read(tmp_path):
    store = ExampleStore(tmp_path / "s")
    store.append({0: ([b"x" * 10, b"y" * 20], 2)})
    with open(tmp_path / "s" / "p0.log", "ab") as f:  # a crash in the middle of the next write
        f.write(b"\x00\x00\x01\x00abc")
    assert store.records() == [b"x" * 10, b"y" * 20]
    assert store.offsets() == {0: 2}


def test_records_the_broker_dropped_are_counted(settings):
    """The mock cluster keeps ~5 MB per partition: past that the oldest records go."""
    s = settings  # its topics have 2 partitions
    topic = s.topic("training")
    store = ExampleStore.for_settings(s)
    values = [i.to_bytes(4, "big") + b"z" * 2000 for i in range(7000)]  # ~14 MB over 2 partitions
    _produce(s, values)
    c = kafka.consumer(s, group="probe")
    try:
        marks = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=5) for p in (0, 1)}
    finally:
        c.close()
    dropped = sum(low for low, _high in marks.values())
    assert dropped > 0  # the broker did drop some (else this test shows nothing)
    rep = store.sync(s)
    assert rep.lost == dropped
    assert rep.new == len(store.records()) == len(values) - dropped
    assert set(store.records()) <= set(values)
