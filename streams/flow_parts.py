"""Small building blocks the dataflow files are wired from, so each flow file reads like its
diagram: the oks / errs split of a decoded stream, typed picks, routing keys, the per-input
``Bundle`` of a step's outputs and the coalesced keyed step."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream

from features.events import Rejected
from features.state_updates import CoVisits, Touch, UserTouch
from features.writes import Write
from streams.coalesce import Coalesce, Group

X = TypeVar("X")


def split_rejected(step_id: str, up: Stream[Any]) -> tuple[Stream[Any], Stream[Rejected]]:
    """(oks, errs): bad input is a stream, not a crash; ``errs`` go to the dead-letter topic."""
    out = op.branch(step_id, up, lambda x: not isinstance(x, Rejected))
    return out.trues, out.falses


def pick(kind: type) -> Any:
    """filter_map function keeping only records of one type (typed split of a stream)."""
    def f(x: object) -> Any:
        return x if isinstance(x, kind) else None
    f.__name__ = f"only_{kind.__name__}"
    return f


def route_key(x: Any) -> str:
    """The routing key of a record or a ``Group`` (groups carry their key)."""
    if isinstance(x, Group):
        return x.key
    return str(getattr(x, "item_id", None) or x.user_id)


def user_of(x: Any) -> str:
    return str(x.user_id)


def item_of(x: Any) -> str:
    return str(x.item_id)


@dataclass(slots=True)
class Bundle:
    """A step's outputs for one input, split by type ONCE (each downstream split is then one
    call per input, not one per output record)."""

    writes: list[Write] = field(default_factory=list)
    touches: list[Touch] = field(default_factory=list)
    covisits: list[CoVisits] = field(default_factory=list)
    user_touches: list[UserTouch] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


_SLOTS = {Write: "writes", Touch: "touches", CoVisits: "covisits", UserTouch: "user_touches",
          Rejected: "rejected"}


def to_bundle(outs: list[Any]) -> Bundle:
    b = Bundle()
    for o in outs:
        getattr(b, _SLOTS[type(o)]).append(o)
    return b


def coalesced(step_id: str, keyed: Any, step: Any, interval_ms: int, wrap: Any = to_bundle,
              copy_state: bool = False) -> Any:
    """A pure keyed step whose Redis writes are coalesced per key (``streams.coalesce``)."""
    return op.key_rm(f"unkey_{step_id}", op.stateful(
        step_id, keyed, lambda resume: Coalesce(step, resume, interval_ms, wrap, copy_state,
                                                step_id)))
