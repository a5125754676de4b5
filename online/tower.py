"""The two-tower path of the scorer's ANN source: the promoted ``two_tower`` model's session
(user) tower turns the session's recent items into a query vector, searched among that model's
own item vectors.

    holder = TowerHolder(settings).start()   # polls the registry in the background
    tower = holder.current                   # None until a usable version is loaded
    vec = tower.user_vector(["i9", "i4"])    # most recent first; None: no item it knows
    rows = tower.index().query(vec, 150)     # [(item_id, cosine)], best first

A version is usable when it has ``item_ids.json`` ({item_id: id-embedding row}; `recsys train
--model two_tower` writes it), since the session tower reads item ids; a model trained with
user features is not used (the scorer gives the tower item ids only). Its item vectors:

* a model with content features: the tower index the embeddings dataflow writes for that
  version (``proto.keys.tower_keys``), followed like the item2vec replica, so new
  catalog items are found from their content;
* an id-only model: every item of its vocabulary, embedded once by its item tower into an
  in-process index (it cannot embed items it was not trained on).

Loading (model, vocabulary, index) runs on the holder's thread; the new version is swapped in
by one reference assignment, so requests never wait for it. Until a version is ready, the ANN
source pools the recent items' item2vec vectors instead (``online.retrieval``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis
import torch

from core.redis_client import redis_client
from core.settings import Settings
from models.ranker_runtime import trace_frozen
from models.registry import TWO_TOWER, TWO_TOWER_VOCAB, ModelRegistry, ModelVersion, default_root
from models.session_data import pad_prefixes
from online.ann.follower import IndexFollower
from online.ann.index import AnnIndex
from proto.keys import Keys, tower_keys

log = logging.getLogger(__name__)


class TowerUnusable(ValueError):
    """A promoted two-tower version the scorer cannot query with."""


@dataclass(frozen=True)
class Tower:
    """One loaded two-tower version: its session tower and the index of its item vectors."""

    version: str
    encode: Callable[[torch.Tensor], torch.Tensor]  # [1, L] right-aligned ids -> [1, D]
    vocab: dict[str, int]  # item id -> id-embedding row (> 0)
    max_len: int
    index: Callable[[], AnnIndex | None]
    follower: IndexFollower | None = None  # content models: the replica of the flow's index

    @property
    def kind(self) -> str:
        return "followed" if self.follower is not None else "vocabulary"

    def user_vector(self, recent: Sequence[str]) -> npt.NDArray[np.float32] | None:
        """The session tower's vector for these items (most recent first); None when it knows
        none of them. Unknown items are left out, the known ones kept in order."""
        rows = [r for r in map(self.vocab.get, recent) if r][: self.max_len]
        if not rows:
            return None
        prefix = pad_prefixes([np.asarray(rows[::-1], dtype=np.int64)], self.max_len)  # oldest ... newest
        with torch.inference_mode():
            out = self.encode(torch.from_numpy(prefix))
        return np.asarray(out[0], dtype=np.float32)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()


def read_vocab(path: Path, n_items: int) -> dict[str, int]:
    """``item_ids.json`` of a version: {item_id: row}, rows inside the model's id table."""
    raw = json.loads(path.read_text())
    if not isinstance(raw, dict):
        raise TowerUnusable(f"{path}: expected a JSON object {{item_id: row}}")
    vocab = {str(k): int(v) for k, v in raw.items()}
    bad = [k for k, v in vocab.items() if not 0 < v < n_items]
    if bad:
        raise TowerUnusable(f"{path}: rows outside 1..{n_items - 1} for {len(bad)} items, e.g. {bad[0]!r}")
    return vocab


def session_encoder(model: Any, max_len: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The session tower as a frozen TorchScript graph for [1, max_len] inputs (the scorer
    always pads to that shape), else the eager module."""
    model.requires_grad_(False)  # serving only; the shared id table would not trace otherwise
    tower = model.session_tower.eval()
    example = torch.zeros((1, max_len), dtype=torch.int64)
    example[0, -1] = 1
    try:
        return trace_frozen(tower, (example,))
    except Exception as exc:  # noqa: BLE001 - eager is the same function, only slower
        log.warning("session tower not traced, serving it eagerly: %s", str(exc).splitlines()[0])
        return tower  # type: ignore[no-any-return]


def vocabulary_index(model: Any, vocab: dict[str, int], chunk: int = 65536) -> AnnIndex:
    """An in-process HNSW of the item tower's vectors for every item of the vocabulary."""
    ids = list(vocab)
    index = AnnIndex(model.config.dim, capacity=max(1024, len(ids)))
    with torch.inference_mode():
        for start in range(0, len(ids), chunk):
            part = ids[start: start + chunk]
            rows = torch.tensor([vocab[i] for i in part], dtype=torch.int64)
            index.upsert(part, model.item_vectors(rows).numpy(), chunk=chunk)
    return index


class TowerHolder:
    """The current ``Tower``; loads a newly promoted ``two_tower`` version in the background."""

    def __init__(self, settings: Settings, registry_root: Path | None = None,
                 interval_s: float | None = None) -> None:
        self.s = settings
        self.registry = ModelRegistry(registry_root or default_root(settings.state_dir))
        self.interval_s = settings.model_reload_s if interval_s is None else interval_s
        self.current: Tower | None = None
        self.seen = ""  # the last version looked at, used or not
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tower-reload", daemon=True)

    def start(self) -> TowerHolder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        if self.current is not None:
            self.current.close()

    def check_once(self) -> bool:
        """Load the promoted version if it changed; True when a new one was swapped in. Any
        failure logs and keeps what is served."""
        try:
            mv = self.registry.current(TWO_TOWER)
        except Exception as exc:  # noqa: BLE001 - an unreadable registry must not stop serving
            log.warning("two-tower registry unreadable, keeping %s: %s", self._serving(), exc)
            return False
        if mv is None or mv.version == self.seen:
            return False
        try:
            tower = self.load(mv)
        except (redis.RedisError, OSError) as exc:  # transient: the next poll tries again
            log.warning("two-tower %s not loaded yet, keeping %s: %s", mv.version, self._serving(), exc)
            return False
        except Exception as exc:  # noqa: BLE001 - a bad model must never take serving down
            self.seen = mv.version  # not retried: it would fail the same way
            log.warning("two-tower %s not used for retrieval, keeping %s: %s", mv.version,
                        self._serving(), exc)
            return False
        self.seen = mv.version
        old, self.current = self.current, tower  # atomic reference swap
        if old is not None:
            old.close()
        log.info("ANN retrieval: session tower of two-tower %s (%d items known, %s index)",
                 tower.version, len(tower.vocab), tower.kind)
        return True

    def load(self, mv: ModelVersion) -> Tower:
        from models.two_tower import TwoTower

        vocab_file = mv.path / TWO_TOWER_VOCAB
        if not vocab_file.is_file():
            raise TowerUnusable(f"no {TWO_TOWER_VOCAB}: the session tower cannot map item ids to its rows")
        model = TwoTower.load(mv.model_file)
        cfg = model.config
        if cfg.user_features:
            raise TowerUnusable("trained with user features; the scorer gives the tower item ids only")
        vocab = read_vocab(vocab_file, cfg.n_items)
        encode = session_encoder(model, cfg.max_len)
        if cfg.has_content:  # the embeddings dataflow writes this version's item vectors
            follower = self._follow(mv.version, cfg.dim)
            return Tower(mv.version, encode, vocab, cfg.max_len, lambda: follower.index, follower)
        index = vocabulary_index(model, vocab)
        return Tower(mv.version, encode, vocab, cfg.max_len, lambda: index)

    def _follow(self, version: str, dim: int) -> IndexFollower:
        client = redis_client(self.s, timeout_s=5.5)
        keys: Keys = tower_keys(self.s.redis_prefix, version)
        follower = IndexFollower(client, keys, dim, snapshot_dir=self.s.state_dir / "ann_tt" / version,
                                 registry=None)  # its metrics stay private: one replica per process
        return follower.start()

    def _serving(self) -> str:
        return self.current.version if self.current is not None else "item2vec pooling"

    def _run(self) -> None:
        self.check_once()
        while not self._stop.wait(self.interval_s):
            self.check_once()
