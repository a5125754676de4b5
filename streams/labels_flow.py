"""The label-join dataflow: what the scorer served ⋈ what the shopper did -> training examples.

    impressions ─► decode_impression ─┐
                                      ├─► key_by_request ─► label_join (timers) ─► training-examples
    clickstream ─► label_events ──────┘

Invalid input is skipped and counted here; the feature dataflow reads the same topics and is
the one that sends bad records to the dead-letter topic (so they are not dead-lettered twice).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from google.protobuf.message import DecodeError
from prometheus_client import Counter

from core.settings import Settings
from features import labels as L
from features.events import Ev, parse
from proto import events_pb2
from streams import flow_metrics as metrics
from streams import kafka_io

EXAMPLES = Counter("recsys_labels_examples_total", "training examples emitted", ["kind"])
SKIPPED = Counter("recsys_labels_skipped_total", "records the label join could not use", ["reason"])
LABEL_TYPES = frozenset({"click", "add_to_cart", "purchase"})


@dataclass(frozen=True, slots=True)
class LabelEvent:
    request_id: str
    etype: str
    item_id: str
    ts_ms: int


def now_ms() -> int:
    return int(time.time() * 1000)


def decode_impression(msg: Any) -> list[events_pb2.Impression]:
    if not isinstance(msg, KafkaSourceMessage):
        SKIPPED.labels("kafka_error").inc()
        return []
    metrics.record_offset(msg.topic or "", msg.partition or 0, msg.offset or 0)
    imp = events_pb2.Impression()
    try:
        imp.ParseFromString(msg.value or b"")
    except (DecodeError, ValueError):
        SKIPPED.labels("undecodable_impression").inc()
        return []
    if not imp.request_id or not imp.items:
        SKIPPED.labels("empty_impression").inc()
        return []
    return [imp]


def label_events(msg: Any, max_skew_ms: int) -> list[LabelEvent]:
    if not isinstance(msg, KafkaSourceMessage):
        SKIPPED.labels("kafka_error").inc()
        return []
    metrics.record_offset(msg.topic or "", msg.partition or 0, msg.offset or 0)
    ev = parse(msg.value, topic=msg.topic or "", partition=msg.partition or 0, offset=msg.offset or 0,
               ingest_ms=0, max_skew_ms=max_skew_ms)
    if not isinstance(ev, Ev):
        SKIPPED.labels("invalid_event").inc()
        return []
    if ev.type not in LABEL_TYPES or not ev.request_id:
        return []  # views, impressions, unattributed actions: not labels
    return [LabelEvent(ev.request_id, ev.type, ev.item_id, ev.ts_ms)]


class LabelJoin(StatefulLogic[Any, events_pb2.TrainingExample, L.LabelState]):
    def __init__(self, key_state: L.LabelState | None, windows: L.Windows) -> None:
        self.w = windows
        self.st = key_state

    def _state(self, request_id: str) -> L.LabelState:
        if self.st is None:
            self.st = L.new_state(request_id, now_ms())
        return self.st

    def on_item(self, value: Any) -> tuple[list[events_pb2.TrainingExample], bool]:
        if isinstance(value, events_pb2.Impression):
            out = L.add_impression(self._state(value.request_id), value, now_ms(), self.w)
        else:
            out = L.add_label(self._state(value.request_id), value.etype, value.item_id,
                              value.ts_ms, now_ms(), self.w)
        EXAMPLES.labels("correction").inc(len(out))
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[events_pb2.TrainingExample], bool]:
        assert self.st is not None
        out, done = L.on_timer(self.st, now_ms(), self.w)
        EXAMPLES.labels("first").inc(len(out))
        return out, StatefulLogic.DISCARD if done else StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.st is None:
            return None
        return datetime.fromtimestamp(L.due_ms(self.st, self.w) / 1000, tz=UTC)

    def snapshot(self) -> L.LabelState:
        assert self.st is not None
        return self.st


def to_record(ex: events_pb2.TrainingExample) -> KafkaSinkMessage[bytes | None, bytes | None]:
    return KafkaSinkMessage(key=ex.request_id.encode(), value=ex.SerializeToString())


def build_label_flow(settings: Settings, flow_id: str = "labels", tail: bool = True) -> Dataflow:
    windows = L.Windows(int(settings.click_window_s * 1000), int(settings.purchase_window_s * 1000),
                        settings.label_time_scale)
    max_skew_ms = int(settings.max_event_skew_s * 1000)

    def source(topic: str) -> KafkaSource:
        return kafka_io.source(settings, topic, tail)

    flow = Dataflow(flow_id)
    impression_msgs = op.input("impressions_in", flow, source("impressions"))
    click_msgs = op.input("clickstream_in", flow, source("clickstream"))
    # Impression (served items, features as served) | LabelEvent (click / cart / purchase)
    impressions = op.flat_map("decode_impression", impression_msgs, decode_impression)
    actions = op.flat_map("label_events", click_msgs, lambda m: label_events(m, max_skew_ms))
    both = op.merge("impressions_and_actions", impressions, actions)
    # (request_id, Impression | LabelEvent) -> TrainingExample (on attribution timers)
    keyed = op.key_on("key_by_request", both, lambda x: x.request_id)
    joined = op.stateful("label_join", keyed, lambda resume: LabelJoin(resume, windows))
    examples = op.key_rm("unkey_examples", joined)
    records = op.map("to_record", examples, to_record)
    op.output("training_examples_out", records, kafka_io.sink(settings, "training"))
    return flow
