"""Real ranker training data: the label join's ``training-examples`` topic (one
``TrainingExample`` per served item, re-sent with delayed purchases) -> ``RankingData``.
The simulated counterpart is ``sim.training_set.simulate``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from core.settings import Settings
from models.deepfm import encode_features
from models.ranking_dataset import RankingData
from proto import codecs

if TYPE_CHECKING:
    from proto import events_pb2


def load_training_examples(records: Iterable[bytes | events_pb2.TrainingExample]) -> RankingData:
    """TrainingExample protobufs (Kafka values) -> RankingData, keeping the latest version of
    each ``example_id`` (corrections carry delayed purchases). Features are decoded from the
    msgpack logged by the scorer and encoded exactly as at serving time."""
    from proto import events_pb2  # here: a GPU box with torch + numpy only trains from .npz
    latest: dict[str, events_pb2.TrainingExample] = {}
    for rec in records:
        if isinstance(rec, bytes | bytearray):
            ex = events_pb2.TrainingExample()
            ex.ParseFromString(bytes(rec))
        else:
            ex = rec
        prev = latest.get(ex.example_id)
        if prev is None or ex.version >= prev.version:
            latest[ex.example_id] = ex
    rows = sorted(latest.values(), key=lambda e: (e.impression_time_ms, e.request_id, e.position))
    feats = [codecs.unpack_features(e.features) for e in rows]
    sparse, dense = encode_features(feats)
    req_ids: dict[str, int] = {}
    return RankingData(
        sparse=sparse, dense=dense,
        labels=np.array([(e.click, e.add_to_cart, e.purchase) for e in rows],
                        dtype=np.float32).reshape(-1, 3),
        times=np.array([e.impression_time_ms for e in rows], dtype=np.int64),
        purchase_delay_ms=np.array([e.purchase_delay_ms for e in rows], dtype=np.int64),
        request=np.array([req_ids.setdefault(e.request_id, len(req_ids)) for e in rows], dtype=np.int64),
        position=np.array([e.position for e in rows], dtype=np.int64),
        p_click_true=np.full(len(rows), np.nan, dtype=np.float32),
        item_id=np.array([e.item_id for e in rows], dtype=np.str_),
        meta={"source": "training-examples", "examples": len(rows),
              "final": int(sum(e.final for e in rows)), "corrections": int(sum(e.version > 1 for e in rows)),
              "sample_features": feats[-500:]},
    )


def consume_training_examples(settings: Settings, timeout_s: float = 60.0) -> list[bytes]:
    """Every record of the ``training-examples`` topic up to its current end (partitions
    assigned directly from the beginning: no consumer-group rebalance to wait for)."""
    import uuid

    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    from core import kafka

    topic = settings.topic("training")
    c = kafka.consumer(settings, group=f"ranker-trainer-{uuid.uuid4().hex[:8]}")
    out: list[bytes] = []
    try:
        ends = kafka.high_watermarks(c, topic)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            msg = c.poll(0.2)
            if msg is None or msg.error():
                continue
            value, part, offset = msg.value(), msg.partition(), msg.offset()
            if value is not None:
                out.append(bytes(value))
            if part is not None and offset is not None and offset + 1 >= ends.get(part, 0):
                pending.discard(part)
    finally:
        c.close()
    return out


__all__ = ["consume_training_examples", "load_training_examples"]
