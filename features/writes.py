"""State writes as values: what a feature step wants Redis to hold, before any I/O.

The features dataflow's sink (``streams.redis_sink``) applies them to Redis; the offline
builder (``features.offline_builder``) applies the same writes to an in-memory image.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class Lazy:
    """A state value computed only when written: ``fn(*args)``. Coalesced writes to a hot key
    then encode only the value that is actually flushed."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def materialize(self) -> Any:
        return self.fn(*self.args)


def materialize(value: Any) -> Any:
    return value.materialize() if isinstance(value, Lazy) else value


class Write(NamedTuple):
    op: str  # "set" | "zadd" | "zreplace" | "sadd" | "zrem" | "ztrim" | "notify" (key: a STREAM)
    key: str
    value: Any
    ingest_ms: int = 0  # Kafka timestamp of the event that caused it (freshness)
    kind: str = ""  # metric label
