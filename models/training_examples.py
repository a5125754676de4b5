"""Real ranker training data: the label join's ``training-examples`` topic (one
``TrainingExample`` per served item, re-sent with delayed purchases) -> ``RankingData``.
The simulated counterpart is ``sim.training_set.simulate``.

``drop_fallback`` leaves out what the scorer did not rank: rows of degraded responses (the
example's ``degraded`` flag, copied by the label join from the impression; examples written
before the flag existed are known by ``model_version`` "fallback", ``online.servicer``) and
fallback items padded into a short list (``sources`` == ["fallback"], or no features: an
empty feature map would train the model on all-zero inputs). ``meta["dropped"]`` counts both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from core.settings import Settings
from models.deepfm import encode_features
from models.ranking_dataset import RankingData
from proto import codecs

if TYPE_CHECKING:
    from proto import events_pb2

FALLBACK_VERSION = "fallback"  # the model_version of a degraded response (online.servicer)
FALLBACK_SOURCE = "fallback"  # the only source of an item padded into a short list


@dataclasses.dataclass
class LoggedColumns:
    """What the scorer logged with each row of a ``RankingData`` beyond features and labels
    (same row order): for off-policy estimates and audits."""

    propensity: npt.NDArray[np.float64]  # P(the policy showed this item here); 0 = not logged
    model_version: npt.NDArray[np.str_]
    arm: npt.NDArray[np.str_]
    served: npt.NDArray[np.float64]  # [n, 3] the served p_click, p_cart, p_purchase

    def take(self, idx: npt.NDArray[Any]) -> LoggedColumns:
        return LoggedColumns(**{f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self)})


def _latest(records: Iterable[bytes | events_pb2.TrainingExample], drop_fallback: bool
            ) -> tuple[list[events_pb2.TrainingExample], list[dict[str, Any]], dict[str, int]]:
    """The latest version of each example, in impression order, their features, what was dropped."""
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
    dropped = {"degraded": 0, "fallback_items": 0}
    if drop_fallback:
        keep = []
        for i, e in enumerate(rows):
            if e.degraded or e.model_version == FALLBACK_VERSION:
                dropped["degraded"] += 1
            elif not feats[i] or list(e.sources) == [FALLBACK_SOURCE]:
                dropped["fallback_items"] += 1
            else:
                keep.append(i)
        rows, feats = [rows[i] for i in keep], [feats[i] for i in keep]
    return rows, feats, dropped


def load_training_examples(records: Iterable[bytes | events_pb2.TrainingExample],
                           drop_fallback: bool = False) -> RankingData:
    """TrainingExample protobufs (Kafka values) -> RankingData, keeping the latest version of
    each ``example_id`` (corrections carry delayed purchases). Features are decoded from the
    msgpack logged by the scorer and encoded exactly as at serving time. ``drop_fallback``:
    leave out degraded and fallback rows (the module docstring)."""
    return load_logged_examples(records, drop_fallback)[0]


def load_logged_examples(records: Iterable[bytes | events_pb2.TrainingExample],
                         drop_fallback: bool = False) -> tuple[RankingData, LoggedColumns]:
    """``load_training_examples`` and the logged columns of the same rows."""
    rows, feats, dropped = _latest(records, drop_fallback)
    sparse, dense = encode_features(feats)
    req_ids: dict[str, int] = {}
    data = RankingData(
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
              "dropped": dropped, "sample_features": feats[-500:]},
    )
    logged = LoggedColumns(
        propensity=np.array([e.propensity for e in rows], dtype=np.float64),
        model_version=np.array([e.model_version for e in rows], dtype=np.str_),
        arm=np.array([e.arm for e in rows], dtype=np.str_),
        served=np.array([(e.served_p_click, e.served_p_cart, e.served_p_purchase) for e in rows],
                        dtype=np.float64).reshape(-1, 3))
    return data, logged


def consume_training_examples(settings: Settings, timeout_s: float = 60.0) -> list[bytes]:
    """Every record the ``training-examples`` topic still holds, up to its current end
    (``core.kafka.read_range``: no consumer-group rebalance to wait for)."""
    import uuid

    from core import kafka

    topic = settings.topic("training")
    c = kafka.consumer(settings, group=f"ranker-trainer-{uuid.uuid4().hex[:8]}")
    try:
        marks = kafka.watermarks(c, topic)
        start = {p: low for p, (low, _high) in marks.items()}
        ends = {p: high for p, (_low, high) in marks.items()}
        return [v for _p, _o, v in kafka.read_range(c, topic, start, ends, timeout_s) if v is not None]
    finally:
        c.close()


__all__ = ["LoggedColumns", "consume_training_examples", "load_logged_examples", "load_training_examples"]
