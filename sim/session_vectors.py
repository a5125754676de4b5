"""Item vectors learned from the simulated sessions, for offline training sets.

The live stack's scorer reads item2vec vectors from its ANN replica, which the embeddings
dataflow trains incrementally on session windows (``streams.embeddings``). Offline
(``sim.training_set``) there is no dataflow, so this trains the same incremental
``models.item2vec.Item2Vec`` on the same kind of windows (each user's views, ``emit_items`` at
a time with ``overlap`` items of left context, ``batch`` windows per fit) as the views happen,
and answers ``get_vectors`` like the replica does, so ``features.taste`` gives the taste
feature offline from vectors as fresh as the live ones would be. (No cold-start blending:
an item without a learned vector has none, and its taste feature is unknown.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from models.item2vec import Item2Vec, Item2VecConfig


class SessionVectors:
    def __init__(self, dim: int = 64, window: int = 5, seed: int = 7, emit_items: int = 10,
                 overlap: int = 2, batch: int = 64) -> None:
        self.model = Item2Vec(Item2VecConfig(dim=dim, window=window, seed=seed))
        self.emit_items, self.overlap, self.batch = emit_items, overlap, batch
        self.open: dict[str, list[str]] = {}  # user -> views not yet fitted (with left context)
        self.pending: list[list[str]] = []
        self._cache: dict[str, npt.NDArray[np.float32]] | None = None
        self.dim = dim

    def observe(self, user_id: str, item_id: str) -> None:
        """One browsing view, in time order."""
        window = self.open.setdefault(user_id, [])
        window.append(item_id)
        if len(window) >= self.emit_items + self.overlap:
            self.pending.append(list(window))
            self.open[user_id] = window[-self.overlap:]
            if len(self.pending) >= self.batch:
                self.model.partial_fit(self.pending)
                self.pending = []
                self._cache = None

    def get_vectors(self, item_ids: Sequence[str]) -> tuple[list[int], npt.NDArray[np.float32]]:
        """(positions in ``item_ids`` of the items with a vector, their unit vectors [m, dim])."""
        if self._cache is None:
            ids, vecs = self.model.vectors()
            self._cache = dict(zip(ids, vecs, strict=True))
        found = [(j, v) for j, i in enumerate(item_ids) if (v := self._cache.get(i)) is not None]
        if not found:
            return [], np.zeros((0, self.dim), dtype=np.float32)
        return [j for j, _ in found], np.stack([v for _, v in found])
