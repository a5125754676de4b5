"""Clickstream event decoding and validation: raw Kafka bytes -> ``Ev`` or a dead letter.

Bad input is a stream, not a crash: ``parse`` never raises; it returns either a valid
``Ev`` or a ``Rejected`` carrying the reason and the original bytes for the DLQ.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from proto import events_pb2

MIN_EVENT_TIME_MS = 946_684_800_000  # 2000-01-01: older timestamps are absurd
MAX_ID_LEN = 128

TYPE_NAMES = {
    events_pb2.IMPRESSION: "impression",
    events_pb2.VIEW: "view",
    events_pb2.CLICK: "click",
    events_pb2.ADD_TO_CART: "add_to_cart",
    events_pb2.PURCHASE: "purchase",
}
ITEM_EVENTS = frozenset({"view", "click", "add_to_cart", "purchase", "impression"})


@dataclass(slots=True)
class Ev:
    """A valid clickstream event, in the dataflow's internal (picklable) form. Treated as a value
    (never changed once made; not ``frozen`` only because that costs ~5x per event created)."""

    event_id: str
    ts_ms: int  # event time
    user_id: str
    type: str  # one of TYPE_NAMES values
    item_id: str
    request_id: str
    position: int
    price: float
    quantity: int
    device: str
    surface: str
    country: str
    ingest_ms: int = 0  # Kafka message timestamp (for freshness metrics)
    partition: int = -1
    offset: int = -1


@dataclass(frozen=True, slots=True)
class Rejected:
    """An event that cannot be used; goes to the dead-letter topic with the reason."""

    reason: str
    original: bytes
    topic: str
    partition: int
    offset: int
    stage: str = "decode_validate"


def validate(msg: events_pb2.Event, now_ms: int, max_skew_ms: int) -> str | None:
    """The reason an event is invalid, or None. Pure."""
    if not msg.event_id:
        return "missing event_id"
    if not msg.user_id:
        return "missing user_id"
    if len(msg.user_id) > MAX_ID_LEN or len(msg.item_id) > MAX_ID_LEN:
        return f"id longer than {MAX_ID_LEN} characters"
    if msg.type not in TYPE_NAMES:
        return f"unknown event type {msg.type}"
    if TYPE_NAMES[msg.type] in ITEM_EVENTS and not msg.item_id:
        return f"missing item_id for {TYPE_NAMES[msg.type]} event"
    if not math.isfinite(msg.price) or msg.price < 0:
        return f"invalid price {msg.price}"
    if msg.quantity < 0:
        return f"negative quantity {msg.quantity}"
    if msg.event_time_ms < MIN_EVENT_TIME_MS:
        return f"absurd event time {msg.event_time_ms} (before 2000-01-01)"
    if msg.event_time_ms > now_ms + max_skew_ms:
        return f"event time {msg.event_time_ms} is more than {max_skew_ms} ms in the future"
    return None


def parse(
    raw: bytes | None,
    *,
    topic: str,
    partition: int,
    offset: int,
    ingest_ms: int,
    max_skew_ms: int,
    now_ms: int | None = None,
) -> Ev | Rejected:
    """Decode + validate one Kafka value. Never raises."""
    data = raw or b""
    if not data:
        return Rejected("empty message", data, topic, partition, offset)
    msg = events_pb2.Event()
    try:
        msg.ParseFromString(data)
    except (DecodeError, ValueError) as exc:
        return Rejected(f"undecodable protobuf Event: {exc}", data, topic, partition, offset)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    reason = validate(msg, now, max_skew_ms)
    if reason is not None:
        return Rejected(reason, data, topic, partition, offset)
    ctx = msg.context
    return Ev(
        event_id=msg.event_id,
        ts_ms=msg.event_time_ms,
        user_id=msg.user_id,
        type=TYPE_NAMES[msg.type],
        item_id=msg.item_id,
        request_id=msg.request_id,
        position=msg.position,
        price=msg.price,
        quantity=msg.quantity,
        device=ctx.device,
        surface=ctx.surface,
        country=ctx.country,
        ingest_ms=ingest_ms,
        partition=partition,
        offset=offset,
    )


def dead_letter_bytes(rej: Rejected, now_ms: int | None = None) -> bytes:
    """The DLQ record (protobuf ``DeadLetter``) for a rejected input."""
    return events_pb2.DeadLetter(
        source_topic=rej.topic,
        partition=rej.partition,
        offset=rej.offset,
        reason=rej.reason,
        original=rej.original,
        failed_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        stage=rej.stage,
    ).SerializeToString()


def make_event(
    *,
    event_id: str,
    ts_ms: int,
    user_id: str,
    type: int,
    item_id: str = "",
    request_id: str = "",
    position: int = 0,
    price: float = 0.0,
    quantity: int = 0,
    device: str = "web",
    surface: str = "home",
    country: str = "",
) -> bytes:
    """Serialise a clickstream ``Event`` (used by the simulator, producers and tests)."""
    return events_pb2.Event(
        event_id=event_id,
        event_time_ms=ts_ms,
        user_id=user_id,
        type=type,  # type: ignore[arg-type]
        item_id=item_id,
        request_id=request_id,
        position=position,
        price=price,
        quantity=quantity,
        context=events_pb2.Context(device=device, surface=surface, country=country),
    ).SerializeToString()
