"""The two-tower, trained on our own traffic in the retraining loop, promoted only when it
retrieves better than what the scorer's ANN source serves.

Each round (``tower_round``, called by ``recsys retrain`` after the ranker's round):

1. Copy what is new on ``clickstream`` and ``catalog`` into the trainer's own stores
   (``models.example_store``) and build the sessions and the latest catalog
   (``models.own_sessions``).
2. Hold out the newest ``holdout_share`` of the sessions (time order, never random); train a
   content two-tower (item tower: id + hashed category, brand, price bucket and title tokens,
   ``models.two_tower.content_features``, the encoding the embeddings dataflow uses; id dropout
   so the content path stands alone for a new item) on the newest ``max_sessions`` older ones.
3. Retrieval recall@k (k = the ANN source's quota) on the held-out sessions' next items, asked
   as the scorer asks (the last ``last_n_viewed`` items, newest first; those items excluded;
   searched among every active catalog item), for the NEW model and the SERVED retrieval: the
   promoted two-tower (its vocabulary and content), or, before any, the item2vec pooling the
   ANN source falls back to (the vectors in Redis, the same recency weights).
4. Promote iff the new recall beats the served one by more than ``min_gain`` on at least
   ``min_cases`` cases. The decision (both recalls with 95% intervals, why, sizes) is written to
   the registry first. The scorers hot-reload the promoted version (``online.tower``) and the
   embeddings dataflow embeds every active catalog item, and each new one, with its item tower
   (``streams.tower_embedder``).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from core.reports import write_json
from core.settings import Settings
from features.taste import ANN_POOL_DECAY, history_vector
from models import own_sessions as OS
from models.device import resolve_device
from models.example_store import ExampleStore
from models.registry import (
    TWO_TOWER,
    TWO_TOWER_VOCAB,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    default_root,
)
from models.session_data import SessionDataset, pad_prefixes
from models.train_two_tower import TowerTrainConfig, train
from models.two_tower import TwoTower, TwoTowerConfig, content_features, id_rows

Log = Callable[[str], None]
Vectors = npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class TowerRetrainConfig:
    dim: int = 64
    n_categories: int = 256  # hashed buckets of each content feature (0 = unknown)
    n_brands: int = 2048
    n_price_buckets: int = 24
    title_buckets: int = 4096
    id_dropout: float = 0.25
    holdout_share: float = 0.15
    # newest training sessions a round learns from (~10 steps each): ~60k examples, ~10 s an
    # epoch on one thread of the 2-core VM
    max_sessions: int = 6_000
    max_cases: int = 5_000  # newest held-out cases the gate scores
    min_cases: int = 200
    k: int = 150  # the ANN source's quota (online.retrieval.SessionAnnSource)
    min_gain: float = 0.0
    threads: int = 1  # torch CPU threads: the trainer shares the machine with the scorer
    train: TowerTrainConfig = dataclasses.field(default_factory=lambda: TowerTrainConfig(
        epochs=4, dim=64, patience=1, n_uniform=1024, val_fraction=0.1, log_every_s=60.0))


@dataclasses.dataclass(frozen=True)
class Retriever:
    """One side of the comparison: a query vector for the recent items (newest first; None when
    it knows none of them) and the vectors of the items it searches."""

    name: str
    query: Callable[[Sequence[str]], Vectors | None]
    items: list[str]
    vectors: Vectors  # [n, D], unit rows


def recall_at_k(r: Retriever, cases: Sequence[tuple[tuple[str, ...], str]], k: int) -> dict[str, Any]:
    """Share of ``cases`` whose next item is in the top ``k`` of ``r`` (recent items excluded),
    with a normal-approximation 95% interval; an item ``r`` cannot find is a miss."""
    row = {item: i for i, item in enumerate(r.items)}
    hits = answered = 0
    for recent, label in cases:
        j = row.get(label)
        q = r.query(recent) if j is not None else None
        if q is None:
            continue
        answered += 1
        scores = r.vectors @ q  # [n]
        above = int((scores > scores[j]).sum())
        above -= sum(1 for i in recent if i in row and scores[row[i]] > scores[j])
        hits += int(above < k)
    n = len(cases)
    p = hits / n if n else 0.0
    half = 1.96 * float(np.sqrt(p * (1 - p) / n)) if n else 0.0
    return {"retriever": r.name, "recall": p, "ci95": [max(0.0, p - half), min(1.0, p + half)],
            "cases": n, "answered": answered, "items": len(r.items), "k": k}


def tower_retriever(name: str, model: TwoTower, vocab: dict[str, int],
                    catalog: dict[str, OS.CatalogEntry], items: list[str]) -> Retriever:
    """The scorer's view of a two-tower version: its session tower over the recent items it
    knows (``online.tower.Tower.user_vector``), its item tower over ``items`` (trained id
    where the vocabulary has one, content for all; ``streams.tower_embedder``)."""
    cfg = model.config
    model.eval()
    with torch.inference_mode():
        feats = content_features([catalog.get(i) for i in items], cfg) if cfg.has_content else None
        vecs = model.item_vectors(id_rows(items, vocab, cfg.n_items), feats).numpy().astype(np.float32)

    def query(recent: Sequence[str]) -> Vectors | None:
        rows = id_rows(recent, vocab, cfg.n_items).numpy()
        known = rows[rows > 0][: cfg.max_len]
        if not known.size:
            return None
        prefix = torch.from_numpy(pad_prefixes([known[::-1]], cfg.max_len))  # oldest ... newest
        with torch.inference_mode():
            return model.user_vectors(prefix)[0].numpy().astype(np.float32)

    return Retriever(name, query, items, vecs)


def pooled_retriever(name: str, vectors: dict[str, Vectors]) -> Retriever:
    """The ANN source's fallback: the recency-weighted mean of the recent items' item2vec
    vectors (``features.taste.ANN_POOL_DECAY``, the ANN source's code path) searched among every
    item vector."""
    items = list(vectors)
    mat = np.stack([vectors[i] for i in items]).astype(np.float32) if items else np.zeros((0, 1), np.float32)
    norms = np.linalg.norm(mat, axis=1, keepdims=True)
    mat = mat / np.maximum(norms, 1e-12)
    row = {item: i for i, item in enumerate(items)}

    def query(recent: Sequence[str]) -> Vectors | None:
        found = [(r, row[i]) for r, i in enumerate(recent) if i in row]
        pooled = history_vector([r for r, _ in found], mat[[j for _, j in found]], ANN_POOL_DECAY)
        return None if pooled is None else pooled.astype(np.float32)

    return Retriever(name, query, items, mat)


def popularity_recall(sessions: Sequence[OS.Session], cases: Sequence[tuple[tuple[str, ...], str]],
                      k: int) -> float:
    """Reference, not a gate input: recall@k of the training sessions' most viewed items (the
    scorer's popular source serves these anyway; the ANN source is there for the rest)."""
    counts: dict[str, int] = {}
    for s in sessions:
        for i in s.items:
            counts[i] = counts.get(i, 0) + 1
    top = sorted(counts, key=lambda i: -counts[i])[: k + max((len(r) for r, _ in cases), default=0)]
    hits = sum(label in [t for t in top if t not in recent][:k] for recent, label in cases)
    return hits / len(cases) if cases else 0.0


def model_config(cfg: TowerRetrainConfig, n_items: int) -> TwoTowerConfig:
    t = cfg.train
    return TwoTowerConfig(n_items=n_items, dim=cfg.dim, max_len=t.max_len, n_categories=cfg.n_categories,
                          n_brands=cfg.n_brands, n_price_buckets=cfg.n_price_buckets,
                          title_buckets=cfg.title_buckets, dropout=t.dropout, id_dropout=cfg.id_dropout,
                          temperature=t.temperature)


def train_on_sessions(sessions: Sequence[OS.Session], catalog: dict[str, OS.CatalogEntry],
                      cfg: TowerRetrainConfig, log: Log) -> tuple[TwoTower, dict[str, int], dict[str, Any]]:
    """A content two-tower trained on ``sessions``: (model, vocabulary, training summary)."""
    vocab = OS.vocabulary(sessions)
    rows = [np.array([vocab[i] for i in s.items], dtype=np.int64) for s in sessions]
    mcfg = model_config(cfg, len(vocab) + 1)
    by_row = [None, *(catalog.get(i) for i in vocab)]  # row 0: padding, unknown
    feats = content_features(by_row, mcfg)
    ds = SessionDataset("own-traffic", rows, [], np.zeros(0, np.int64), len(vocab) + 1)
    device = resolve_device("cpu", cfg.threads)
    res = train(ds, dataclasses.replace(cfg.train, dim=cfg.dim), device, log, mcfg, feats)
    summary = {"sessions": len(sessions), "items": len(vocab), "examples": res.n_train_examples,
               "epochs": res.epochs_run, "best_epoch": res.best_epoch, "train_s": round(res.train_s, 1),
               "catalog_rows_known": sum(1 for r in by_row[1:] if r is not None)}
    return res.model, vocab, summary


def decide(new: dict[str, Any], served: dict[str, Any], cfg: TowerRetrainConfig) -> tuple[bool, str]:
    """The gate: (promote?, why)."""
    if new["cases"] < cfg.min_cases:
        return False, f"{new['cases']} held-out cases < {cfg.min_cases}"
    gain = new["recall"] - served["recall"]
    if gain > cfg.min_gain:
        return True, (f"recall@{cfg.k} {new['recall']:.4f} beats the served {served['retriever']} "
                      f"{served['recall']:.4f} by {gain:+.4f}")
    return False, (f"recall@{cfg.k} {new['recall']:.4f} does not beat the served {served['retriever']} "
                   f"{served['recall']:.4f} (gain {gain:+.4f} <= {cfg.min_gain})")


def served_retriever(settings: Settings, cur: ModelVersion | None, catalog: dict[str, OS.CatalogEntry],
                     items: list[str]) -> Retriever:
    """What the ANN source serves now: the promoted two-tower ``cur``, else item2vec pooling."""
    if cur is not None:
        try:
            model = TwoTower.load(cur.model_file)
            vocab = {str(k): int(v) for k, v in json.loads((cur.path / TWO_TOWER_VOCAB).read_text()).items()}
            return tower_retriever(f"two_tower {cur.version}", model, vocab, catalog, items)
        except (OSError, ValueError, KeyError, RuntimeError, RegistryError):
            pass  # unusable by the scorer too (online.tower): it serves item2vec pooling
    from core.redis_client import redis_client
    from features.embedding_store import EmbeddingStore
    from proto.keys import Keys

    store = EmbeddingStore(redis_client(settings, timeout_s=10.0), Keys(prefix=settings.redis_prefix))
    active = set(items)
    vectors = {item: sv.vector for item, sv in store.scan() if item in active}
    return pooled_retriever("item2vec pooling", vectors)


def tower_round(settings: Settings, cfg: TowerRetrainConfig | None = None,
                log: Log = print) -> dict[str, Any]:
    """One round (module doc); returns the decision (also in the registry)."""
    cfg = cfg or TowerRetrainConfig()
    stores = {key: ExampleStore.for_settings(settings, key) for key in ("clickstream", "catalog")}
    synced = {key: store.sync(settings).as_dict() for key, store in stores.items()}
    counts = OS.ReadCounts()
    sessions = OS.sessions_from_clickstream(stores["clickstream"].records(),
                                            int(settings.session_gap_s * 1000), counts)
    catalog = OS.latest_catalog(stores["catalog"].records())
    older, newest = OS.split_newest(sessions, cfg.holdout_share)
    cases = OS.next_item_cases(newest, settings.last_n_viewed, cfg.max_cases)
    base = {"model": TWO_TOWER, "store": synced, "read": counts.as_dict(), "sessions": len(sessions),
            "holdout_sessions": len(newest), "cases": len(cases)}
    if len(cases) < cfg.min_cases or len(older) < 10:
        why = (f"{len(cases)} held-out cases < {cfg.min_cases}" if len(cases) < cfg.min_cases
               else f"{len(older)} training sessions < 10")
        return {"action": "skip", "reason": why, **base}
    items = sorted(i for i, e in catalog.items() if e.active)  # what the tower index holds
    reg = ModelRegistry(default_root(settings.state_dir))
    current = reg.current(TWO_TOWER)  # what the scorers serve (they follow this pointer)
    served = recall_at_k(served_retriever(settings, current, catalog, items), cases, cfg.k)
    model, vocab, trained = train_on_sessions(older[-cfg.max_sessions:], catalog, cfg, log)
    new = recall_at_k(tower_retriever("new two_tower", model, vocab, catalog, items), cases, cfg.k)
    promote, reason = decide(new, served, cfg)
    base["reference_popularity_recall"] = popularity_recall(older, cases, cfg.k)
    with tempfile.TemporaryDirectory() as staging:
        model.save(Path(staging) / "model.pt", extra={"dataset": "own traffic"})
        write_json(Path(staging) / TWO_TOWER_VOCAB, vocab)
        headline = {"model": TWO_TOWER, "recall": new["recall"], "k": cfg.k, "dataset": "own traffic"}
        version = reg.register(TWO_TOWER, staging, headline, model.config.to_dict())
    now = time.time()
    decision = {"action": "promoted" if promote else "kept", "reason": reason, "new_version": version,
                "current_version": current.version if current else None,
                "new": new, "served": served, "training": trained, **base,
                "decided_at": now, "decided_at_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
    reg.record_decision(TWO_TOWER, decision)
    if promote:
        reg.promote(TWO_TOWER, version)
    return decision
