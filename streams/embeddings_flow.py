"""The embeddings dataflow: sessions -> incremental item2vec -> item vectors + changelog in Redis,
which every scorer's HNSW replica follows (``online.ann.follower.IndexFollower``).

    clickstream ─► decode_validate ─► events ─► key_by_user ─► session_windows ─┐ Segment
                                                   (update_session; a window per  │
                                                    emit_items new items / end)   │
    catalog     ─► decode_catalog ─► CatalogRow ──────────────────────────────────┤
                                                                                  ▼
                        to_model (one Group per batch) ─► key "model" ─► embed_model
                           item2vec partial_fit per batch_sessions windows (or flush_ms),
                           cold-start blend, deactivation deletes, promoted item tower
                                                                                  ▼
                                    VecOp ─► embedding_store: EmbeddingStore.put_many / delete
                                    (key + changelog entry in one MULTI/EXEC; entry ID = sequence)

The model is ONE key, so one worker of the cluster holds it: item vectors must live in one
vector space, which independent per-worker models would not give. Decoding and sessions
scale out with the workers (keyed by user); the model step is the bottleneck: on one shared
core ~3k windows of 10 items/s (~30k view/click events/s) with 5k items, ~1.8k/s (~18k
events/s) with 50k items. Invalid input is counted and skipped here: the feature dataflow
reads the same topics and dead-letters it once.
"""

from __future__ import annotations

import logging
import pickle
import time
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
import redis
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from prometheus_client import Counter, Gauge, Histogram

from core.redis_client import redis_client
from core.settings import Settings, resolve_redis_url
from features.embedding_store import EmbeddingStore
from features.events import Ev
from features.state_updates import CatalogRow
from models.registry import default_root
from proto.keys import Keys, tower_keys
from streams import decoders as D
from streams import kafka_io
from streams.coalesce import Group, group_by
from streams.embeddings import (
    I2V,
    TOWER,
    CatalogInfo,
    EmbConfig,
    EmbeddingModel,
    EmbSession,
    FitReport,
    Segment,
    VecOp,
    session_close,
    session_step,
)
from streams.tower_embedder import TowerEmbedder

log = logging.getLogger(__name__)
MODEL_KEY = "model"

WINDOWS = Counter("recsys_embeddings_session_windows_total", "session windows sent to item2vec")
FIT_S = Histogram("recsys_embeddings_fit_seconds", "one item2vec partial_fit (+ vector export)",
                  buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
PAIRS = Counter("recsys_embeddings_pairs_total", "skip-gram pairs trained")
LOSS = Gauge("recsys_embeddings_loss", "mean SGNS loss per pair of the last batch")
VOCAB = Gauge("recsys_embeddings_items", "items in the item2vec vocabulary")
WRITTEN = Counter("recsys_embeddings_vectors_written_total", "vector writes and deletes",
                  ["index", "kind"])
WARM = Counter("recsys_embeddings_cold_start_ended_total",
               "items switched from the blended cold-start vector to their learned vector")
FRESHNESS = Histogram("recsys_embeddings_freshness_seconds",
                      "catalog row (Kafka timestamp) -> vector or delete in the changelog",
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30))
SKIPPED = Counter("recsys_embeddings_skipped_total", "input records not used", ["reason"])


def now_ms() -> int:
    return int(time.time() * 1000)


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


# ----------------------------------------------------------------------------------------
# stateful steps


class SessionWindows(StatefulLogic[Any, Segment, EmbSession]):
    """Per user: the session rule of the feature dataflow; windows of new items for item2vec.
    A session idle for ``gap_s`` (processing time) sends its rest and its state is dropped."""

    def __init__(self, cfg: EmbConfig, resume: EmbSession | None) -> None:
        self.cfg, self.st, self.wall_ms = cfg, resume, now_ms()

    def on_item(self, value: Any) -> tuple[list[Segment], bool]:
        out: list[Segment] = []
        for ev in value.items if isinstance(value, Group) else (value,):
            self.st, segs = session_step(self.cfg, self.st, event_id=ev.event_id, user_id=ev.user_id,
                                         ts_ms=ev.ts_ms, etype=ev.type, item_id=ev.item_id)
            out += segs
        self.wall_ms = now_ms()
        WINDOWS.inc(len(out))
        return out, StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[Segment], bool]:
        out = session_close(self.cfg, self.st) if self.st is not None else []
        WINDOWS.inc(len(out))
        return out, StatefulLogic.DISCARD

    def on_eof(self) -> tuple[list[Segment], bool]:
        return self.on_notify()

    def notify_at(self) -> datetime | None:
        return None if self.st is None else _at(self.wall_ms + int(self.cfg.gap_s * 1000))

    def snapshot(self) -> EmbSession:
        assert self.st is not None
        return self.st  # frozen


class EmbedModel(StatefulLogic[Any, VecOp, bytes | None]):
    """The one global model (see module doc). Snapshots are the pickled ``EmbeddingModel``
    (a copy, as the model mutates in place), taken only when recovery is on."""

    def __init__(self, cfg: EmbConfig, resume: bytes | None, tower: TowerEmbedder, recovery: bool
                 ) -> None:
        self.m: EmbeddingModel = pickle.loads(resume) if resume else EmbeddingModel(cfg)
        if self.m.cfg.dim != cfg.dim:
            raise ValueError(f"recovered item2vec has dim {self.m.cfg.dim}, settings say {cfg.dim}: "
                             "clear the recovery store to retrain in the new dimension")
        self.m.cfg = cfg
        self.tower, self.recovery = tower, recovery

    def on_item(self, value: Any) -> tuple[list[VecOp], bool]:
        now = now_ms()
        ops = self._poll_tower(now)
        rows: list[CatalogRow] = []
        for x in value.items if isinstance(value, Group) else (value,):
            if isinstance(x, Segment):
                self.m.add(x, now)
            else:
                info = CatalogInfo(x.category, x.brand, x.price, x.title, x.active)
                ops += self.m.upsert(x.item_id, info, now, x.ingest_ms)
                rows.append(x)
        return ops + self._tower_rows(rows, now) + self._tick(now), StatefulLogic.RETAIN

    def on_notify(self) -> tuple[list[VecOp], bool]:
        now = now_ms()
        return self._poll_tower(now) + self._tick(now), StatefulLogic.RETAIN

    def on_eof(self) -> tuple[list[VecOp], bool]:
        ops, rep = self.m.fit(now_ms())
        self._report(rep)
        return ops, StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        due = self.m.due_ms()
        check = int(self.tower.next_check * 1000)
        return _at(check if due is None else min(due, check))

    def snapshot(self) -> bytes | None:
        return pickle.dumps(self.m, protocol=pickle.HIGHEST_PROTOCOL) if self.recovery else None

    def _poll_tower(self, now: int) -> list[VecOp]:
        """A newly promoted item tower: embed every active catalog item into its index."""
        if not self.tower.poll(now / 1000):
            return []
        active = [(i, c) for i, c in self.m.catalog.items() if c.active]
        log.info("item tower %s: embedding %d active catalog items", self.tower.space, len(active))
        ops: list[VecOp] = []
        for start in range(0, len(active), 1024):
            ops += self._tower_puts(active[start : start + 1024], now, 0)
        return ops

    def _tick(self, now: int) -> list[VecOp]:
        t0 = time.perf_counter()
        ops, rep = self.m.tick(now)
        if rep is not None:
            FIT_S.observe(time.perf_counter() - t0)
            self._report(rep)
        return ops

    def _report(self, rep: FitReport) -> None:
        PAIRS.inc(rep.pairs)
        if rep.pairs:
            LOSS.set(rep.loss)
        VOCAB.set(len(self.m.model))
        if rep.warmed:
            WARM.inc(len(rep.warmed))
            log.info("cold start ended for %d items (%d interactions): learned vectors from now on, "
                     "e.g. %s", len(rep.warmed), self.m.cfg.min_interactions, rep.warmed[:5])

    def _tower_puts(self, rows: list[tuple[str, CatalogInfo]], now: int, ingest_ms: int
                    ) -> list[VecOp]:
        vecs = self.tower.embed(rows)
        return [VecOp(TOWER, "put", tuple(i for i, _ in rows), vecs, self.m.next_version(now),
                      self.tower.space, ingest_ms, "tower")]

    def _tower_rows(self, rows: list[CatalogRow], now: int) -> list[VecOp]:
        """Item-tower writes for catalog rows, in row order (puts batched between deletes)."""
        if not rows or not self.tower.usable:
            return []
        ops: list[VecOp] = []
        puts: list[tuple[str, CatalogInfo]] = []
        ingest = 0
        for r in rows:
            if r.active:
                puts.append((r.item_id, self.m.catalog[r.item_id]))
                ingest = max(ingest, r.ingest_ms)
                continue
            if puts:
                ops += self._tower_puts(puts, now, ingest)
                puts = []
            ops.append(VecOp(TOWER, "del", (r.item_id,), None, self.m.next_version(now),
                             self.tower.space, r.ingest_ms, "delete"))
        if puts:
            ops += self._tower_puts(puts, now, ingest)
        return ops


# ----------------------------------------------------------------------------------------
# sink


class _StorePartition(StatelessSinkPartition[VecOp]):
    def __init__(self, url: str, settings: Settings | None, prefix: str) -> None:
        self.client = redis_client(settings, url=url, timeout_s=10)
        self.prefix = prefix
        self.stores: dict[str, EmbeddingStore] = {}

    def _store(self, o: VecOp) -> EmbeddingStore:
        space = o.space if o.target == TOWER else ""
        if space not in self.stores:
            keys = tower_keys(self.prefix, space) if space else Keys(prefix=self.prefix)
            self.stores[space] = EmbeddingStore(self.client, keys)
        return self.stores[space]

    def write_batch(self, items: list[VecOp]) -> None:
        for o in items:
            store = self._store(o)
            for attempt in range(5):
                try:
                    if o.vectors is not None:
                        store.put_many(o.ids, o.vectors, version=o.version)
                    else:
                        store.delete(o.ids)
                    break
                except redis.AuthenticationError:  # a wrong password does not heal
                    raise
                except redis.ConnectionError:
                    if attempt == 4:
                        raise
                    time.sleep(0.2 * 2**attempt)
            WRITTEN.labels(o.target, o.kind).inc(len(o.ids))
            if o.ingest_ms:
                FRESHNESS.observe(max(0.0, time.time() - o.ingest_ms / 1000))

    def close(self) -> None:
        self.client.close()


class EmbeddingSink(DynamicSink[VecOp]):
    """``settings``: the credentials and TLS options for ``url`` (``core.redis_client``)."""

    def __init__(self, url: str, settings: Settings | None, prefix: str) -> None:
        self.url, self.settings, self.prefix = url, settings, prefix

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _StorePartition:
        return _StorePartition(self.url, self.settings, self.prefix)


# ----------------------------------------------------------------------------------------
# wiring


def _key(x: Group) -> str:
    return x.key


def _events(x: object) -> Ev | None:
    if isinstance(x, Ev):
        return x
    SKIPPED.labels("invalid_event").inc()
    return None


def _rows(x: object) -> CatalogRow | None:
    if isinstance(x, CatalogRow):
        return x
    SKIPPED.labels("invalid_catalog").inc()
    return None


def build_embeddings_flow(settings: Settings, flow_id: str = "embeddings", tail: bool = True
                          ) -> Dataflow:
    cfg = EmbConfig.from_settings(settings)
    max_skew_ms = int(settings.max_event_skew_s * 1000)
    root = default_root(settings.state_dir)
    check_s = float(getattr(settings, "embeddings_model_check_s", 30.0))
    recovery = bool(settings.stream_recovery)

    def source(topic: str) -> KafkaSource:
        return kafka_io.source(settings, topic, tail)

    flow = Dataflow(flow_id)
    click_msgs = op.input("clickstream_in", flow, source("clickstream"))
    catalog_msgs = op.input("catalog_in", flow, source("catalog"))
    # clickstream: KafkaSourceMessage -> Ev -> (user_id, Group[Ev]) -> Segment
    decoded = op.map("decode_validate", click_msgs, lambda m: D.decode_clickstream(m, max_skew_ms))
    events = op.filter_map("valid_events", decoded, _events)
    by_user = op.flat_map_batch("group_events", events, lambda es: group_by(es, lambda e: e.user_id))
    keyed_users = op.key_on("key_by_user", by_user, _key)
    windows = op.stateful("session_windows", keyed_users, lambda resume: SessionWindows(cfg, resume))
    segments = op.key_rm("unkey_windows", windows)
    # catalog: KafkaSourceMessage -> CatalogRow
    catalog = op.map("decode_catalog", catalog_msgs, D.decode_catalog)
    rows = op.filter_map("catalog_rows", catalog, _rows)
    # ("model", Group[Segment | CatalogRow]) -> VecOp
    model_inputs = op.merge("model_inputs", segments, rows)
    to_model = op.flat_map_batch("to_model", model_inputs, lambda xs: [Group(MODEL_KEY, list(xs))])
    keyed_model = op.key_on("key_model", to_model, _key)
    model = op.stateful("embed_model", keyed_model, lambda resume: EmbedModel(
        cfg, resume, TowerEmbedder(root, check_s, cfg.price_scale), recovery))
    ops = op.key_rm("unkey_model", model)
    op.output("embedding_store", ops, EmbeddingSink(resolve_redis_url(settings), settings,
                                                    settings.redis_prefix))
    return flow


__all__ = ["I2V", "TOWER", "EmbeddingSink", "TowerEmbedder", "build_embeddings_flow"]
