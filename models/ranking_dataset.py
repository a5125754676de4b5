"""Ranking training sets: ``RankingData`` (one row per shown item, features as served, labels),
its time split and the purchase labels a trainer at an earlier cut-off would have seen.

Where rows come from: the label join's ``training-examples`` topic (``models.training_examples``)
or the simulated shop (``sim.training_set.simulate``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.deepfm import TASKS

DAY_MS = 86_400_000
LABELS = {"click": 0, "add_to_cart": 1, "purchase": 2}  # event type -> label column (TASKS order)


@dataclass
class RankingData:
    """One row per shown (request, item), in impression-time order."""

    sparse: npt.NDArray[np.int64]  # [n, len(SPARSE)] stable hashes (models.deepfm.hash_token)
    dense: npt.NDArray[np.float32]  # [n, len(DENSE)]
    labels: npt.NDArray[np.float32]  # [n, 3] click, cart, purchase (TASKS order), eventual truth
    times: npt.NDArray[np.int64]  # impression event time (ms)
    purchase_delay_ms: npt.NDArray[np.int64]  # impression -> purchase, 0 without purchase
    request: npt.NDArray[np.int64]  # request index (rows of one list share it)
    position: npt.NDArray[np.int64]
    p_click_true: npt.NDArray[np.float32]  # hidden truth at the shown position (NaN if unknown)
    item_id: npt.NDArray[np.str_]  # the shown item (analysis, tests; models read ``sparse``)
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.times.size)

    def take(self, idx: npt.NDArray[Any]) -> RankingData:
        arrays = {f.name: getattr(self, f.name)[idx] for f in dataclasses.fields(self) if f.name != "meta"}
        return RankingData(**arrays, meta=dict(self.meta))

    @classmethod
    def concat(cls, *parts: RankingData) -> RankingData:
        """The parts' rows one after another (their ``meta`` from the first)."""
        arrays = {f.name: np.concatenate([getattr(p, f.name) for p in parts])
                  for f in dataclasses.fields(cls) if f.name != "meta"}
        return cls(**arrays, meta=dict(parts[0].meta) if parts else {})

    def save(self, path: str | Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "meta"}
        np.savez_compressed(path, **arrays, meta_json=np.array(json.dumps(self.meta, default=str)))

    @classmethod
    def load(cls, path: str | Path) -> RankingData:
        with np.load(path) as z:
            meta = json.loads(str(z["meta_json"])) if "meta_json" in z else {}
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls) if f.name != "meta"}, meta=meta)

    def rates(self) -> dict[str, float]:
        return {t: float(self.labels[:, j].mean()) if len(self) else 0.0 for j, t in enumerate(TASKS)}


def time_split(times: npt.ArrayLike, valid_frac: float = 0.15, test_frac: float = 0.15
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Indices of (train, valid, test): the earliest period, then the next, then the latest.
    Cut at impression-time boundaries, so one request never straddles two parts."""
    t = np.asarray(times, dtype=np.int64)
    if not 0 <= valid_frac < 1 or not 0 <= test_frac < 1 or valid_frac + test_frac >= 1:
        raise ValueError("fractions must be in [0, 1) and sum to < 1")
    srt = np.sort(t)
    n = t.size
    t1 = srt[min(int(n * (1 - valid_frac - test_frac)), n - 1)]
    t2 = srt[min(int(n * (1 - test_frac)), n - 1)] if test_frac > 0 else np.iinfo(np.int64).max
    return (np.flatnonzero(t < t1), np.flatnonzero((t >= t1) & (t < t2)), np.flatnonzero(t >= t2))


def observed_purchases(data: RankingData, cutoff_ms: int) -> tuple[npt.NDArray[np.float32],
                                                                   npt.NDArray[np.int64]]:
    """(purchase label as seen at ``cutoff_ms``, elapsed ms since each impression): a purchase
    later than the cutoff is not known yet and looks like a negative."""
    y = data.labels[:, 2] > 0
    seen = y & (data.times + data.purchase_delay_ms <= cutoff_ms)
    return seen.astype(np.float32), np.maximum(cutoff_ms - data.times, 0)
