"""The promoted two-tower model's item tower, for the embeddings dataflow
(``streams.embeddings_flow``): it embeds catalog items into the tower's own index."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from models.registry import TWO_TOWER, TWO_TOWER_VOCAB, ModelRegistry, RegistryError
from proto.keys import tower_keys
from streams.embeddings import CatalogInfo

log = logging.getLogger(__name__)


class TowerEmbedder:
    """The promoted ``two_tower`` model's item tower, re-read when the registry pointer moves.

    Catalog items are embedded from content (category, brand, price bucket, hashed title
    tokens; ``streams.emb_vectors`` holds the encoding a content model must be trained with);
    an item found in the version's optional ``item_ids.json`` ({item_id: row}) also gets its
    trained id embedding, others id 0 (content only). A model without content features
    cannot embed unseen items and is not used.
    """

    def __init__(self, root: Path, check_s: float, price_scale: float = 1.0) -> None:
        self.registry = ModelRegistry(root)
        self.check_s = check_s
        self.price_scale = price_scale
        self.next_check = 0.0
        self.version: str | None = None  # the version looked at last (used or not)
        self.model: Any = None  # a TwoTower when usable
        self.vocab: dict[str, int] = {}

    @property
    def usable(self) -> bool:
        return self.model is not None

    @property
    def space(self) -> str:
        return self.version or ""

    def poll(self, now_s: float) -> bool:
        """Check the registry (every ``check_s``); True if a new usable model was loaded."""
        if now_s < self.next_check:
            return False
        self.next_check = now_s + self.check_s
        try:
            cur = self.registry.current(TWO_TOWER)
        except (RegistryError, OSError) as exc:
            log.warning("two-tower registry unreadable, keeping %s: %s", self.version, exc)
            return False
        if cur is None or cur.version == self.version:
            return False
        self.version, self.model, self.vocab = cur.version, None, {}
        try:
            import torch

            from models.two_tower import TwoTower

            torch.set_num_threads(1)
            model = TwoTower.load(cur.model_file)
            vocab_file = cur.path / TWO_TOWER_VOCAB
            vocab = json.loads(vocab_file.read_text()) if vocab_file.is_file() else {}
        except (OSError, RuntimeError, ValueError, KeyError) as exc:
            log.error("two-tower %s unusable, no item-tower vectors: %s", cur.version, exc)
            return False
        if not model.config.has_content:
            log.warning("two-tower %s has no content features: it cannot embed new catalog items; "
                        "item-tower index not written", cur.version)
            return False
        self.model, self.vocab = model, {str(k): int(v) for k, v in vocab.items()}
        log.info("item tower: two-tower %s (dim %d) embeds catalog items into index %s",
                 cur.version, model.config.dim, tower_keys("<prefix>", cur.version).root)
        return True

    def embed(self, rows: list[tuple[str, CatalogInfo]]) -> np.ndarray:
        import torch

        from models.two_tower import content_features, id_rows

        c = self.model.config
        ids = id_rows([item for item, _ in rows], self.vocab, c.n_items)
        feats = content_features([info for _, info in rows], c, self.price_scale)
        with torch.no_grad():
            return np.asarray(self.model.item_vectors(ids, feats).numpy(), dtype=np.float32)


__all__ = ["TowerEmbedder"]
