"""Label join: attribution windows, delayed purchases as corrections, early labels buffered."""

from __future__ import annotations

import subprocess
import sys
import time

from confluent_kafka import Consumer

from core import kafka
from features import labels as L
from features.events import make_event
from proto import events_pb2
from tests.conftest import ROOT, settings_env

W = L.Windows(click_ms=30 * 60_000, purchase_ms=7 * 86400_000)
T = 1_750_000_000_000


def _imp(rid: str = "r1", items=("a", "b", "c")) -> events_pb2.Impression:
    imp = events_pb2.Impression(request_id=rid, user_id="u", event_time_ms=T, arm="model",
                                model_version="m1")
    for pos, item in enumerate(items):
        imp.items.append(events_pb2.ServedItem(item_id=item, position=pos, features=b"\x80",
                                               p_click=0.1, propensity=0.5))
    return imp


def test_first_emission_after_click_window_then_delayed_purchase_correction():
    st = L.new_state("r1", now_ms=0)
    assert L.add_impression(st, _imp(), now_ms=0, w=W) == []
    assert L.add_label(st, "click", "b", T + 60_000, now_ms=1, w=W) == []  # not emitted yet
    assert L.add_label(st, "click", "c", T + 31 * 60_000, now_ms=2, w=W) == []  # too late to count
    assert L.due_ms(st, W) == W.click_ms
    out, done = L.on_timer(st, now_ms=W.click_ms, w=W)
    assert not done
    by_item = {e.item_id: e for e in out}
    assert [e.item_id for e in out] == ["a", "b", "c"]  # in served order
    assert by_item["b"].click and not by_item["c"].click and not by_item["a"].click
    assert all(e.version == 1 and not e.correction and not e.purchase for e in out)
    assert by_item["b"].features == b"\x80" and by_item["b"].arm == "model"
    # two days later the purchase of b arrives: a correction, version 2
    corr = L.add_label(st, "purchase", "b", T + 2 * 86400_000, now_ms=2 * 86400_000, w=W)
    assert len(corr) == 1 and corr[0].correction and corr[0].version == 2
    assert corr[0].purchase and corr[0].click and corr[0].purchase_delay_ms == 2 * 86400_000
    assert corr[0].example_id == "r1/b" and corr[0].final
    # after the purchase window the state is dropped
    assert L.on_timer(st, now_ms=W.purchase_ms, w=W) == ([], True)


def test_degraded_flag_and_sources_reach_the_trainer_which_drops_them():
    from models.training_examples import load_logged_examples
    from proto import codecs

    feats = codecs.pack_features({"item_id": "x", "log_price": 1.0})
    ranked = _imp("r1", items=("a", "b"))
    for it, sources in zip(ranked.items, (["covisit", "popular"], ["fallback"]), strict=True):
        it.features = feats
        it.sources.extend(sources)
    degraded = _imp("r2", items=("c", "d"))
    degraded.degraded, degraded.model_version = True, "ranker-v3"  # flagged, whatever the version
    for it in degraded.items:
        it.features = feats
        it.sources.append("fallback")
    out = []
    for imp in (ranked, degraded):
        st = L.new_state(imp.request_id, now_ms=0)
        L.add_impression(st, imp, now_ms=0, w=W)
        out += L.on_timer(st, now_ms=W.click_ms, w=W)[0]
    by_id = {e.example_id: e for e in out}
    assert [list(by_id[f"r1/{i}"].sources) for i in "ab"] == [["covisit", "popular"], ["fallback"]]
    assert [by_id[k].degraded for k in ("r1/a", "r2/c", "r2/d")] == [False, True, True]
    data, _logged = load_logged_examples([e.SerializeToString() for e in out], drop_fallback=True)
    assert len(data) == 1 and data.meta["dropped"] == {"degraded": 2, "fallback_items": 1}


def test_label_before_impression_is_buffered_and_orphans_expire():
    st = L.new_state("r2", now_ms=0)
    assert L.add_label(st, "click", "a", T + 1000, now_ms=0, w=W) == []
    L.add_impression(st, _imp("r2"), now_ms=5, w=W)
    out, _ = L.on_timer(st, now_ms=5 + W.click_ms, w=W)
    assert {e.item_id: e.click for e in out} == {"a": True, "b": False, "c": False}
    orphan = L.new_state("r3", now_ms=0)
    L.add_label(orphan, "purchase", "x", T, now_ms=0, w=W)
    assert L.on_timer(orphan, now_ms=W.purchase_ms - 1, w=W) == ([], False)
    assert L.on_timer(orphan, now_ms=W.purchase_ms, w=W) == ([], True)


def test_label_dataflow_emits_examples_and_corrections_live(settings, tmp_path):
    s = settings.replace(click_window_s=1.0, purchase_window_s=30.0, state_dir=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "recsys.cli.main", "stream", "--flow", "labels"],
                            cwd=ROOT, env=settings_env(s), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    consumer = Consumer({**s.kafka_config(), "group.id": "lbl", "auto.offset.reset": "earliest"})
    consumer.subscribe([s.topic("training")])
    try:
        p = kafka.producer(s)
        now = int(time.time() * 1000)
        imp = _imp("live1")
        imp.event_time_ms = now
        p.produce(s.topic("impressions"), key=b"u", value=imp.SerializeToString())
        p.produce(s.topic("clickstream"), key=b"u", value=make_event(
            event_id="c1", ts_ms=now + 100, user_id="u", type=events_pb2.CLICK, item_id="a",
            request_id="live1", position=0))
        p.flush(10)
        got: list[events_pb2.TrainingExample] = []
        deadline = time.monotonic() + 60
        purchased = False
        while time.monotonic() < deadline and not any(e.correction for e in got):
            m = consumer.poll(0.2)
            if m is not None and not m.error():
                got.append(events_pb2.TrainingExample.FromString(m.value()))
            if len(got) >= 3 and not purchased:  # first emission done: now a delayed purchase
                p.produce(s.topic("clickstream"), key=b"u", value=make_event(
                    event_id="p1", ts_ms=now + 5000, user_id="u", type=events_pb2.PURCHASE,
                    item_id="a", request_id="live1", position=0, quantity=1, price=9.0))
                p.flush(10)
                purchased = True
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        first = [e for e in got if e.version == 1]
        assert sorted(e.item_id for e in first) == ["a", "b", "c"]
        assert [e.click for e in first if e.item_id == "a"] == [True]
        corrections = [e for e in got if e.correction]
        assert len(corrections) == 1 and corrections[0].item_id == "a" and corrections[0].purchase
    finally:
        consumer.close()
        proc.terminate()
        proc.wait(20)
