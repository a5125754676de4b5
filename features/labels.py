"""Label join as pure functions: impressions ⋈ click / add-to-cart / purchase by request_id.

Attribution uses EVENT time: a click counts if it happened within ``click_window`` of the
impression, a cart or purchase within ``purchase_window`` (7 days default). Emission uses
PROCESSING time, so the join never waits on a watermark: each served item's example is emitted
once the click window has passed since the impression arrived (version 1), and again as a
correction (version + 1, ``correction=True``) whenever a delayed cart or purchase arrives
later within the purchase window. State is dropped when the purchase window has passed.

A trainer can therefore either keep the latest version per ``example_id`` (exact labels, 7 days
late) or learn from version 1 immediately and treat corrections as delayed positives with
fake-negative weighting (Ktena et al., RecSys 2019): see ``models`` and ARCHITECTURE.md.
Label events that arrive before their impression are buffered until it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from proto import events_pb2


@dataclass(frozen=True)
class Windows:
    """Attribution windows (event time) and the processing-time waits derived from them:
    ``time_scale`` > 1 when event time runs faster than wall time (an accelerated simulator),
    so emission and state expiry wait window / time_scale of wall time."""

    click_ms: int = 30 * 60_000
    purchase_ms: int = 7 * 24 * 3600_000
    time_scale: float = 1.0

    @property
    def emit_ms(self) -> int:
        return int(self.click_ms / self.time_scale)

    @property
    def keep_ms(self) -> int:
        return int(self.purchase_ms / self.time_scale)


@dataclass
class Served:
    position: int
    features: bytes
    propensity: float
    p_click: float
    p_cart: float
    p_purchase: float
    sources: tuple[str, ...] = ()


@dataclass
class LabelState:
    request_id: str
    first_seen_ms: int  # processing time of the first record for this request
    user_id: str = ""
    imp_ts: int = 0  # impression event time; 0 until the impression arrives
    arrived_ms: int = 0  # processing time the impression arrived
    arm: str = ""
    model_version: str = ""
    degraded: bool = False  # the impression's flag (the scorer answered with its fallback list)
    items: dict[str, Served] = field(default_factory=dict)
    click: dict[str, int] = field(default_factory=dict)  # item -> delay (ms)
    cart: dict[str, int] = field(default_factory=dict)
    purchase: dict[str, int] = field(default_factory=dict)
    pending: list[tuple[str, str, int]] = field(default_factory=list)  # (etype, item, ts)
    versions: dict[str, int] = field(default_factory=dict)  # item -> last emitted version


def new_state(request_id: str, now_ms: int) -> LabelState:
    return LabelState(request_id=request_id, first_seen_ms=now_ms)


def add_impression(st: LabelState, imp: events_pb2.Impression, now_ms: int, w: Windows
                   ) -> list[events_pb2.TrainingExample]:
    if st.imp_ts:  # duplicate delivery of the same impression
        return []
    st.user_id, st.imp_ts, st.arrived_ms = imp.user_id, imp.event_time_ms, now_ms
    st.arm, st.model_version, st.degraded = imp.arm, imp.model_version, imp.degraded
    for it in imp.items:
        st.items[it.item_id] = Served(it.position, it.features, it.propensity, it.p_click,
                                      it.p_cart, it.p_purchase, tuple(it.sources))
    out: list[events_pb2.TrainingExample] = []
    pending, st.pending = st.pending, []
    for etype, item, ts in pending:
        out += add_label(st, etype, item, ts, now_ms, w)
    return out


def add_label(st: LabelState, etype: str, item: str, ts_ms: int, now_ms: int, w: Windows
              ) -> list[events_pb2.TrainingExample]:
    """Attribute one click / add_to_cart / purchase; corrections for already-emitted items."""
    if not st.imp_ts:
        st.pending.append((etype, item, ts_ms))
        return []
    if item not in st.items:
        return []
    delay = ts_ms - st.imp_ts
    window = w.click_ms if etype == "click" else w.purchase_ms
    if delay < 0 or delay > window:
        return []
    labels = {"click": st.click, "add_to_cart": st.cart, "purchase": st.purchase}.get(etype)
    if labels is None or item in labels:
        return []
    labels[item] = delay
    if item in st.versions:  # already emitted: a delayed conversion -> correction
        return [example(st, item, now_ms, w, correction=True)]
    return []


def example(st: LabelState, item: str, now_ms: int, w: Windows, correction: bool = False
            ) -> events_pb2.TrainingExample:
    s = st.items[item]
    version = st.versions.get(item, 0) + 1
    st.versions[item] = version
    return events_pb2.TrainingExample(
        example_id=f"{st.request_id}/{item}", request_id=st.request_id, user_id=st.user_id,
        item_id=item, impression_time_ms=st.imp_ts, position=s.position, features=s.features,
        propensity=s.propensity, arm=st.arm, model_version=st.model_version,
        served_p_click=s.p_click, served_p_cart=s.p_cart, served_p_purchase=s.p_purchase,
        click=item in st.click, add_to_cart=item in st.cart, purchase=item in st.purchase,
        click_delay_ms=st.click.get(item, 0), purchase_delay_ms=st.purchase.get(item, 0),
        version=version, correction=correction, emitted_at_ms=now_ms,
        elapsed_ms=now_ms - st.arrived_ms,
        final=now_ms - st.arrived_ms >= w.keep_ms or item in st.purchase,
        degraded=st.degraded, sources=s.sources,
    )


def due_ms(st: LabelState, w: Windows) -> int:
    """Processing time of this request's next action."""
    if not st.imp_ts:
        return st.first_seen_ms + w.keep_ms  # orphan label events: give up then
    if not st.versions:
        return st.arrived_ms + w.emit_ms
    return st.arrived_ms + w.keep_ms


def on_timer(st: LabelState, now_ms: int, w: Windows) -> tuple[list[events_pb2.TrainingExample], bool]:
    """(examples to emit, whether the state is finished and can be dropped)."""
    if not st.imp_ts:
        return [], now_ms >= st.first_seen_ms + w.keep_ms
    out: list[events_pb2.TrainingExample] = []
    if not st.versions and now_ms >= st.arrived_ms + w.emit_ms:
        out = [example(st, item, now_ms, w) for item in sorted(st.items, key=lambda i: st.items[i].position)]
    return out, now_ms >= st.arrived_ms + w.keep_ms
