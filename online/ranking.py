"""Ranking runtime: the current model (hot-reloaded from the registry) or a transparent
heuristic, scoring all candidates in one batch, and the value blend.

A ranker is anything with ``version`` and ``predict(features) -> array [n, 3]`` of calibrated
(p_click, p_cart, p_purchase). ``ModelHolder`` polls the registry pointer and loads a newly
promoted version in a background thread, then swaps a reference: requests in flight keep the
model they started with; nothing waits on a load.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from features.ranking_features import COL, DENSE, FeatureBatch

log = logging.getLogger(__name__)


class Ranker(Protocol):
    version: str

    def predict(self, features: FeatureBatch) -> np.ndarray: ...


class HeuristicRanker:
    """Stands in until a trained model is promoted, and says so (version ``heuristic-v1``).

    p_click = sigmoid(-3.6 + 2.2·covisit + 0.8·popular + 1.4·session affinity
                      + 1.2·user category preference + 8·(item CTR - 0.02));
    p_cart = 0.25·p_click, p_purchase = 0.1·p_click. Not calibrated."""

    version = "heuristic-v1"
    WEIGHTS = {"covisit": 2.2, "popular": 0.8, "s_cat_aff": 1.4, "u_cat_pref": 1.2, "item_ctr": 8.0}
    BIAS = -3.6 - 8.0 * 0.02

    def predict(self, features: FeatureBatch | Sequence[Mapping[str, Any]]) -> np.ndarray:
        if isinstance(features, FeatureBatch):
            dense = features.dense
        else:
            dense = np.array([[f[n] for n in DENSE] for f in features],
                             dtype=np.float64).reshape(-1, len(DENSE))
        logit = self.BIAS + sum(w * dense[:, COL[name]] for name, w in self.WEIGHTS.items())
        p = 1.0 / (1.0 + np.exp(-logit))
        return np.stack([p, 0.25 * p, 0.1 * p], axis=1)


def value_scores(probs: np.ndarray, prices: Sequence[float] | np.ndarray, revenue_weight: float,
                 click_weight: float) -> np.ndarray:
    """value = revenue_weight · p_purchase · log1p(price) + click_weight · p_click.

    (p_purchase is already p(click)·p(purchase | click) for ESMM-style models.)"""
    price = np.log1p(np.asarray(prices, dtype=np.float64))
    return revenue_weight * probs[:, 2] * price + click_weight * probs[:, 0]


class ModelHolder:
    """The current ranker; reloads when the registry's promoted version changes."""

    def __init__(self, registry_root: Path, name: str, loader: Callable[[Path], Ranker] | None,
                 interval_s: float = 5.0) -> None:
        self.root, self.name, self.loader, self.interval_s = registry_root, name, loader, interval_s
        self.current: Ranker = HeuristicRanker()
        self.loaded_version = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="model-reload", daemon=True)

    def start(self) -> ModelHolder:
        self.check_once()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def check_once(self) -> bool:
        """Load the promoted version if it changed; False (and keep serving) on any failure."""
        if self.loader is None:
            return False
        try:
            from models.registry import ModelRegistry

            mv = ModelRegistry(self.root).current(self.name)
            if mv is None or mv.version == self.loaded_version:
                return False
            ranker = self.loader(mv.path)  # slow part, off the request path
            suffix = getattr(ranker, "precision_suffix", "")
            ranker.version = f"{self.name}-{mv.version}{suffix}"
        except Exception as exc:  # noqa: BLE001 - a bad model must never take serving down
            log.warning("model reload failed, keeping %s: %s", self.current.version, exc)
            return False
        self.current, self.loaded_version = ranker, mv.version  # atomic reference swap
        log.info("serving model %s", ranker.version)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check_once()


def default_loader(int8: bool = False, bf16: str = "auto") -> Callable[[Path], Ranker] | None:
    """``models.ranker_runtime.load_ranker`` (one intra-op thread, optional INT8, frozen
    TorchScript graph; ``bf16``: "auto" (where the CPU has native bf16), "on" or "off")."""
    try:
        from models.ranker_runtime import load_ranker
    except ImportError:
        return None
    low = {"auto": None, "on": True, "off": False}[bf16]
    return lambda path: load_ranker(path, quantize_int8=int8 or None, threads=1,  # type: ignore[return-value]
                                    frozen=True, bf16=low)
