"""Record bytes -> feature-step input, for the catalog, users and impressions topics (the
clickstream's is ``features.events.parse``). Never raises: bad input becomes a ``Rejected``
(reason + original bytes + where it came from) for the dead-letter topic.

Pure: the dataflow's decoders (``streams.decoders``) call these with a consumed message's
coordinates, the offline builder with a log record's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import DecodeError, Message

from features.events import Rejected
from features.state_updates import CatalogRow, ProfileRow, Touch
from proto import events_pb2

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record came from: the source topic's coordinates and its ingest time."""

    topic: str
    partition: int
    offset: int
    ingest_ms: int


@dataclass(frozen=True, slots=True)
class Parsed(Generic[M]):
    """A decoded protobuf value with where it came from (for a dead letter if it is invalid)."""

    value: M
    raw: bytes
    origin: Origin

    @property
    def ingest_ms(self) -> int:
        return self.origin.ingest_ms

    def reject(self, reason: str, stage: str) -> Rejected:
        o = self.origin
        return Rejected(reason, self.raw, o.topic, o.partition, o.offset, stage)


def parse_message(raw: bytes, cls: type[M], origin: Origin, stage: str) -> Parsed[M] | Rejected:
    """Bytes -> protobuf ``cls``, or the ``Rejected`` a dead letter is made of."""
    value = cls()
    try:
        value.ParseFromString(raw)
    except (DecodeError, ValueError) as exc:
        o = origin
        return Rejected(f"undecodable {cls.__name__}: {exc}", raw, o.topic, o.partition, o.offset, stage)
    return Parsed(value, raw, origin)


def catalog_row(raw: bytes, origin: Origin) -> CatalogRow | Rejected:
    p = parse_message(raw, events_pb2.ItemUpsert, origin, "decode_catalog")
    if isinstance(p, Rejected):
        return p
    item = p.value
    if not item.item_id or item.price < 0 or item.price != item.price:
        reason = "missing item_id" if not item.item_id else f"invalid price {item.price}"
        return p.reject(reason, "decode_catalog")
    return CatalogRow(item.item_id, item.title, item.category, item.brand, item.price, item.rating,
                      item.active, item.updated_ms, p.ingest_ms)


def profile_row(raw: bytes, origin: Origin) -> ProfileRow | Rejected:
    p = parse_message(raw, events_pb2.UserProfile, origin, "decode_profile")
    if isinstance(p, Rejected):
        return p
    prof = p.value
    if not prof.user_id:
        return p.reject("missing user_id", "decode_profile")
    return ProfileRow(prof.user_id, prof.country, prof.age_bucket, prof.signup_ms, prof.updated_ms,
                      p.ingest_ms)


def impression_touches(raw: bytes, origin: Origin) -> list[Touch | Rejected]:
    """One impression ``Touch`` per served item (counts for CTR); degraded answers count too."""
    p = parse_message(raw, events_pb2.Impression, origin, "decode_impressions")
    if isinstance(p, Rejected):
        return [p]
    imp = p.value
    if not imp.request_id or imp.event_time_ms <= 0:
        return [p.reject("impression without request_id or time", "decode_impressions")]
    return [Touch(it.item_id, "", "impression", imp.event_time_ms, 1, 0.0, p.ingest_ms)
            for it in imp.items if it.item_id]
