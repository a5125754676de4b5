"""Embedding logic of the embeddings dataflow (no I/O): session windows, cold-start blending
(its vector helpers and the item tower's content features: ``streams.emb_vectors``), and
``EmbeddingModel``, the one global model state (incremental item2vec + catalog + interaction
counts) that the dataflow drives.

Vector spaces: the session-neighbour index (``Keys(prefix)``: the item keys + changelog that
``IndexFollower`` follows) holds ONLY item2vec vectors (``embedding_dim``). The two-tower item
tower writes its vectors to a separate index per promoted model version
(``tower_keys(prefix, version)``): a tower's vectors are only comparable with the session tower
of the same version, whatever the dimensions, so spaces are never mixed.

Cold start (item2vec index): an item with ``n`` training interactions (occurrences in the
session windows fed to the model) gets ``normalise((1 - a)·prior + a·learned)`` with
``a = min(1, n / min_interactions)``; the prior is the mean of its category's and its brand's
learned-vector centroids (each centroid weighs an item by its own ``a``), else a deterministic
direction hashed from category and brand (same category -> same region) while neither has a
centroid. At ``a = 1`` the item uses its learned vector alone (logged and counted).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from features.sessions import SessionState, update_session
from models.item2vec import Item2Vec, Item2VecConfig
from streams.emb_vectors import (
    blend_rows,
    blend_weight,
    group_centroids,
    hashed_direction,
    prior_vector,
    unit,
)

Vec = npt.NDArray[np.float32]
I2V, TOWER = "i2v", "tt"  # VecOp.target values


@dataclass(frozen=True)
class EmbConfig:
    dim: int = 64  # item2vec dimension = the session-neighbour index's dimension
    window: int = 5  # item2vec context window
    seed: int = 7
    batch_sessions: int = 64  # session windows per partial_fit
    flush_ms: int = 500  # a partial batch is fitted at most this long after its first window
    emit_items: int = 10  # an open session sends its new items after this many
    overlap: int = 2  # already-sent items repeated as left context of the next window
    min_interactions: int = 20  # cold start ends (learned vector alone) at this many
    min_change: float = 1e-3  # a vector closer than this (1 - cosine) to the written one is not rewritten
    centroid_refresh_ms: int = 2000
    write_interval_ms: int = 1000  # an item's trained vector is written at most this often
    stale_refresh_max: int = 1000  # hashed-prior items re-written per centroid refresh
    gap_s: float = 1800.0  # session gap (same rule as the feature dataflow)
    last_n: int = 5
    price_scale: float = 1.0  # item tower price bucket = 1 + floor(price_scale * log2(1 + price))

    @classmethod
    def from_settings(cls, s: Any) -> EmbConfig:
        def g(name: str, default: float) -> Any:  # settings that may not exist yet
            return getattr(s, name, default)

        return cls(
            dim=int(g("embedding_dim", 64)), window=int(g("item2vec_window", 5)),
            batch_sessions=int(g("item2vec_batch_sessions", 64)),
            flush_ms=int(g("item2vec_flush_ms", 500)),
            emit_items=int(g("item2vec_session_emit", 10)),
            min_interactions=int(g("cold_start_min_interactions", 20)),
            min_change=float(g("embeddings_min_change", 1e-3)),
            write_interval_ms=int(g("embeddings_write_interval_ms", 1000)),
            gap_s=float(s.session_gap_s), last_n=int(s.last_n_viewed),
        )


# ----------------------------------------------------------------------------------------
# session windows: the feature dataflow's session rule, sending new items to the model


@dataclass(frozen=True, slots=True)
class Segment:
    """Part of one session for item2vec: ``items[:n_context]`` were sent before (left
    context), the rest are new; interactions are counted on the new part only."""

    items: tuple[str, ...]
    n_context: int


@dataclass(frozen=True, slots=True)
class EmbSession:
    session: SessionState
    unsent: int = 0  # items appended to the sequence since the last window was sent


def _window(st: EmbSession, overlap: int) -> list[Segment]:
    seq = st.session.sequence
    n_new = min(st.unsent, len(seq))
    n_ctx = min(overlap, len(seq) - n_new)
    items = tuple(item for item, _ts in seq[len(seq) - n_new - n_ctx :])
    return [Segment(items, n_ctx)] if n_new and len(items) >= 2 else []


def session_step(cfg: EmbConfig, st: EmbSession | None, *, event_id: str, user_id: str, ts_ms: int,
                 etype: str, item_id: str) -> tuple[EmbSession, list[Segment]]:
    """Apply one event (``update_session``); returns windows that are ready: the rest of the
    previous session when a new one starts, and the open session's new items once there are
    ``emit_items`` of them."""
    upd = update_session(st.session if st else None, event_id=event_id, user_id=user_id,
                         ts_ms=ts_ms, etype=etype, item_id=item_id, gap_s=cfg.gap_s,
                         last_n=cfg.last_n)
    if upd.duplicate:
        assert st is not None
        return st, []
    out: list[Segment] = []
    unsent = st.unsent if st else 0
    if st is not None and upd.state.session_id != st.session.session_id:
        out += _window(st, cfg.overlap)  # the previous session is complete
        unsent = 0
    appended = etype in ("view", "click") and bool(item_id)  # update_session sequenced it
    new = EmbSession(upd.state, unsent + (1 if appended else 0))
    if new.unsent >= cfg.emit_items:
        out += _window(new, cfg.overlap)
        new = replace(new, unsent=0)
    return new, out


def session_close(cfg: EmbConfig, st: EmbSession) -> list[Segment]:
    """The session timed out: its unsent items as a last window."""
    return _window(st, cfg.overlap)


# ----------------------------------------------------------------------------------------
# the global model state


class CatalogInfo(NamedTuple):
    category: str
    brand: str
    price: float
    title: str
    active: bool


class VecOp(NamedTuple):
    """A write for the sink: put vectors / delete items in one index."""

    target: str  # which index: I2V | TOWER
    op: str  # "put" | "del"
    ids: tuple[str, ...]
    vectors: Vec | None
    version: int
    space: str = ""  # TOWER: the two-tower model version
    ingest_ms: int = 0  # Kafka time of the catalog row that caused it (0: training)
    kind: str = ""  # metric label: cold | blend | learned | tower | delete


@dataclass
class FitReport:
    sessions: int = 0
    pairs: int = 0
    loss: float = float("nan")
    warmed: list[str] = field(default_factory=list)  # items whose cold start ended


class VecTable:
    """item -> last written unit vector, rows of one growing float32 matrix (a dict of small
    arrays costs ~10x more to snapshot)."""

    def __init__(self, dim: int) -> None:
        self.rows: dict[str, int] = {}
        self.mat = np.zeros((0, dim), dtype=np.float32)
        self.free: list[int] = []

    def get(self, ids: Sequence[str]) -> tuple[npt.NDArray[np.bool_], Vec]:
        """(present mask, rows; zeros where absent)."""
        idx = np.array([self.rows.get(i, -1) for i in ids], dtype=np.int64)
        out = np.zeros((len(ids), self.mat.shape[1]), dtype=np.float32)
        out[idx >= 0] = self.mat[idx[idx >= 0]]
        return idx >= 0, out

    def put(self, ids: Sequence[str], vecs: Vec) -> None:
        for item, vec in zip(ids, vecs, strict=True):
            row = self.rows.get(item)
            if row is None:
                if not self.free:
                    old = self.mat.shape[0]
                    self.mat = np.resize(self.mat, (max(1024, 2 * old), self.mat.shape[1]))
                    self.free = list(range(self.mat.shape[0] - 1, old - 1, -1))
                row = self.rows[item] = self.free.pop()
            self.mat[row] = vec

    def discard(self, item: str) -> None:
        row = self.rows.pop(item, None)
        if row is not None:
            self.free.append(row)


class EmbeddingModel:
    """Incremental item2vec + what the cold start needs. One instance for the whole dataflow
    (one key): every item shares one vector space, which per-worker models would not give.

    Training marks the items it touched dirty; their vectors are written at most once per
    ``write_interval_ms`` (bounding the changelog and the replicas' HNSW upserts to the
    distinct items touched per interval); catalog rows are written at once.
    """

    def __init__(self, cfg: EmbConfig) -> None:
        self.cfg = cfg
        self.model = Item2Vec(Item2VecConfig(dim=cfg.dim, window=cfg.window, seed=cfg.seed))
        self.catalog: dict[str, CatalogInfo] = {}
        self.seen: dict[str, int] = {}  # training interactions per item
        self.written = VecTable(cfg.dim)  # what the i2v index holds
        self.stale: dict[str, None] = {}  # written with a hashed prior (no centroid yet)
        self.dirty: dict[str, None] = {}  # touched by training since the last write
        self.pending: list[Segment] = []
        self.pending_since_ms: int | None = None
        self.last_write_ms = 0
        self.version = 0
        self.cat_centroids: dict[str, Vec] = {}
        self.brand_centroids: dict[str, Vec] = {}
        self.centroids_ms = -(1 << 62)
        self._priors: dict[tuple[str, str], tuple[Vec, bool]] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Snapshot: the catalog as plain tuples (5x faster to pickle), no caches."""
        state = dict(self.__dict__)
        state["catalog"] = {k: tuple(v) for k, v in self.catalog.items()}
        state["_priors"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state["catalog"] = {k: CatalogInfo(*v) for k, v in state["catalog"].items()}
        self.__dict__.update(state)

    # --- versions and timing ----------------------------------------------------------------
    def next_version(self, now_ms: int) -> int:
        """Monotonic across restarts: wall-clock ms, bumped if the clock did not move."""
        self.version = max(now_ms, self.version + 1)
        return self.version

    def add(self, seg: Segment, now_ms: int) -> None:
        if not self.pending:
            self.pending_since_ms = now_ms
        self.pending.append(seg)

    def due_ms(self) -> int | None:
        """When ``tick`` has work: a partial batch to fit, or dirty vectors to write."""
        due = [self.pending_since_ms + self.cfg.flush_ms] if self.pending_since_ms is not None else []
        if self.dirty:
            due.append(self.last_write_ms + self.cfg.write_interval_ms)
        return min(due) if due else None

    def tick(self, now_ms: int) -> tuple[list[VecOp], FitReport | None]:
        rep = None
        due = self.pending_since_ms is not None and now_ms >= self.pending_since_ms + self.cfg.flush_ms
        if len(self.pending) >= self.cfg.batch_sessions or due:
            rep = self.train()
        if self.dirty and now_ms - self.last_write_ms >= self.cfg.write_interval_ms:
            return self.write_dirty(now_ms), rep
        return [], rep

    def fit(self, now_ms: int) -> tuple[list[VecOp], FitReport]:
        """Train on everything pending and write every touched vector now."""
        rep = self.train()
        return self.write_dirty(now_ms), rep

    # --- training ---------------------------------------------------------------------------
    def train(self) -> FitReport:
        """partial_fit on the pending windows; the touched items become dirty."""
        segs, self.pending, self.pending_since_ms = self.pending, [], None
        stats = self.model.partial_fit([s.items for s in segs])
        rep = FitReport(len(segs), stats.pairs, stats.loss)
        m = self.cfg.min_interactions
        for seg in segs:
            for item in seg.items[seg.n_context :]:
                n = self.seen.get(item, 0) + 1
                self.seen[item] = n
                if n == m:
                    rep.warmed.append(item)
        self.dirty.update(dict.fromkeys(stats.touched))
        return rep

    def write_dirty(self, now_ms: int) -> list[VecOp]:
        ops = self.refresh_centroids(now_ms)
        ops += self._write(list(self.dirty), now_ms, 0)
        self.dirty.clear()
        self.last_write_ms = now_ms
        return ops

    def refresh_centroids(self, now_ms: int) -> list[VecOp]:
        """Recompute category / brand centroids (at most every ``centroid_refresh_ms``);
        re-write up to ``stale_refresh_max`` items whose hashed prior now has a centroid."""
        if now_ms - self.centroids_ms < self.cfg.centroid_refresh_ms:
            return []
        self.centroids_ms = now_ms
        ids = [i for i in self.model.items if self.seen.get(i, 0) > 0
               and (c := self.catalog.get(i)) is not None and c.active]
        ids, vecs = self.model.vectors(ids)
        w = np.minimum(1.0, np.array([self.seen[i] for i in ids], dtype=np.float32)
                       / max(1, self.cfg.min_interactions))
        self.cat_centroids = group_centroids([self.catalog[i].category for i in ids], vecs, w)
        self.brand_centroids = group_centroids([self.catalog[i].brand for i in ids], vecs, w)
        self._priors.clear()
        redo = []
        for item in list(self.stale)[: self.cfg.stale_refresh_max]:
            info = self.catalog.get(item)
            if info is None or not info.active or info.category in self.cat_centroids \
                    or info.brand in self.brand_centroids:
                redo.append(item)
                del self.stale[item]
        return self._write(redo, now_ms, 0)

    # --- vectors ----------------------------------------------------------------------------
    def prior(self, info: CatalogInfo) -> tuple[Vec, bool]:
        """(prior, hashed): the centroid mean, else the hashed direction of category+brand."""
        key = (info.category, info.brand)
        if key not in self._priors:
            p = prior_vector(self.cat_centroids.get(info.category),
                             self.brand_centroids.get(info.brand))
            hashed = p is None
            if p is None:
                p = unit(hashed_direction(f"c:{info.category}", self.cfg.dim)
                         + 0.5 * hashed_direction(f"b:{info.brand}", self.cfg.dim))
            assert p is not None
            self._priors[key] = (p, hashed)
        return self._priors[key]

    def vectors(self, ids: list[str]) -> tuple[Vec, list[str]]:
        """Vectors for the i2v index (zero rows: nothing to go on) and their kinds."""
        n, d, m = len(ids), self.cfg.dim, self.cfg.min_interactions
        learned = np.zeros((n, d), dtype=np.float32)
        known, vecs = self.model.vectors(ids)
        pos = {item: k for k, item in enumerate(ids)}
        learned[[pos[i] for i in known]] = vecs
        prior = np.zeros((n, d), dtype=np.float32)
        a = np.ones(n, dtype=np.float32)
        kinds = ["learned"] * n
        for k, item in enumerate(ids):
            info = self.catalog.get(item)
            w = blend_weight(self.seen.get(item, 0), m)
            if info is None or w >= 1.0:
                continue
            prior[k], hashed = self.prior(info)
            if hashed:
                self.stale[item] = None
            else:
                self.stale.pop(item, None)
            a[k] = w
            kinds[k] = "blend" if w > 0 and learned[k].any() else "cold"
        return blend_rows(prior, learned, a), kinds

    def _write(self, items: Iterable[str], now_ms: int, ingest_ms: int, force: bool = False
               ) -> list[VecOp]:
        ids = [i for i in dict.fromkeys(items) if (c := self.catalog.get(i)) is None or c.active]
        if not ids:
            return []
        vecs, kinds = self.vectors(ids)
        keep = np.abs(vecs).sum(axis=1) > 0
        if not force:
            present, old = self.written.get(ids)
            keep &= ~present | (1.0 - np.einsum("nd,nd->n", old, vecs) >= self.cfg.min_change)
        rows = np.flatnonzero(keep)
        if rows.size == 0:
            return []
        self.written.put([ids[r] for r in rows], vecs[rows])
        ver = self.next_version(now_ms)
        out = []
        for kind in ("cold", "blend", "learned"):
            sel = [r for r in rows if kinds[r] == kind]
            if sel:
                out.append(VecOp(I2V, "put", tuple(ids[r] for r in sel), vecs[sel], ver, "",
                                 ingest_ms, kind))
        return out

    # --- catalog ----------------------------------------------------------------------------
    def upsert(self, item: str, info: CatalogInfo, now_ms: int, ingest_ms: int) -> list[VecOp]:
        """A catalog row: a (cold-start) vector for an active item, a delete for an inactive one."""
        prev = self.catalog.get(item)
        self.catalog[item] = info
        if not info.active:
            self.written.discard(item)
            self.stale.pop(item, None)
            if prev is not None and not prev.active:
                return []  # already deleted
            return [VecOp(I2V, "del", (item,), None, self.next_version(now_ms), "", ingest_ms, "delete")]
        force = prev is None or not prev.active  # (re)entering the index: always written
        return self._write([item], now_ms, ingest_ms, force=force)
