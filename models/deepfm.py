"""DeepFM ranker (Guo et al., IJCAI 2017) over the ranking feature spec of ``features.ranking_features``.

Shapes: B = batch, S = ``len(SPARSE)`` sparse fields, N = ``len(DENSE)`` dense fields,
F = S + N FM fields, D = ``embed_dim``, T = number of task heads.

* ``encode_features`` turns feature dicts (exactly what ``features.ranking_features.assemble`` returns, as
  served and as logged) into two arrays: ``sparse`` [B, S] int64 (a stable crc32 of
  ``field=value``; "" hashes to 0) and ``dense`` [B, N] float32. The hash does not depend on
  the model; each model maps it into its own per-field bucket range (``hash % buckets[f]``).
* ``FeatureEncoder`` (shared by DeepFM and MMoE): per-field hashed embeddings for the sparse
  fields, one learned vector per dense field scaled by the standardised value (so dense
  features take part in the FM interactions), and a first-order (wide) term per task head.
* ``FMInteraction``: the second-order FM term ``0.5·((Σ_f v_f)² - Σ_f v_f²)`` per dimension.
* ``DeepFM``: logit = first-order + Σ_d FM + MLP(all field vectors); ONE task head.

Every model returns log-probabilities [B, T] (``forward``); losses are computed from them
(``models.train_ranker``) so ESMM products and delayed-feedback corrections stay stable.
The config dataclass (with ``FEATURE_VERSION``) is saved in the checkpoint.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from features.ranking_features import DENSE, FEATURE_VERSION, SPARSE, FeatureBatch, hash_token

TASKS = ("click", "cart", "purchase")  # column order of label arrays and of Ranker.predict
DEFAULT_BUCKETS = {"item_id": 1 << 16, "category": 1024, "brand": 4096, "surface": 64,
                   "device": 64, "country": 512, "user_id": 1 << 16}



class FeatureHasher:
    """``encode_features`` with a per-field memo of hashes (the scorer sees the same values
    again and again; a dict lookup is cheaper than crc32 + formatting)."""

    def __init__(self, sparse: Sequence[str] = SPARSE, dense: Sequence[str] = DENSE,
                 max_cache: int = 1 << 20) -> None:
        self.sparse, self.dense = tuple(sparse), tuple(dense)
        self.max_cache = max_cache
        self._memo: list[dict[str, int]] = [{} for _ in self.sparse]
        self._dense_cols: list[int] | None = None

    def _column(self, j: int, values: Sequence[str]) -> list[int]:
        memo, name = self._memo[j], self.sparse[j]
        col = []
        for v in values:
            h = memo.get(v)
            if h is None:
                h = hash_token(name, v)
                if len(memo) < self.max_cache:
                    memo[v] = h
            col.append(h)
        return col

    def encode(self, features: Sequence[Mapping[str, Any]]
               ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Feature dicts -> (sparse [n, S] int64, dense [n, N] float32)."""
        n = len(features)
        sp = np.zeros((n, len(self.sparse)), dtype=np.int64)
        for j, name in enumerate(self.sparse):
            sp[:, j] = self._column(j, [v if isinstance(v := f.get(name, ""), str) else str(v)
                                        for f in features])
        dense = np.array([[f.get(name, 0.0) for name in self.dense] for f in features],
                         dtype=np.float32).reshape(n, len(self.dense))
        return sp, dense

    def encode_batch(self, batch: FeatureBatch) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """A columnar ``FeatureBatch`` -> the same arrays as ``encode(batch.rows())``, without
        building a dict per item: precomputed hashes are used as they are, other per-item
        columns are hashed through the memo, request constants once."""
        n = len(batch)
        sp = np.empty((n, len(self.sparse)), dtype=np.int64)
        pre = batch.hashes or {}
        for j, name in enumerate(self.sparse):
            if name in pre:
                sp[:, j] = pre[name]
                continue
            values = batch.sparse(name)
            sp[:, j] = self._column(j, [values] if isinstance(values, str) else values)
        if self._dense_cols is None:
            self._dense_cols = [DENSE.index(name) for name in self.dense]
        dense = batch.dense[:, self._dense_cols].astype(np.float32)
        return sp, dense


def encode_features(features: Sequence[Mapping[str, Any]]
                    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Feature dicts -> (sparse hashes [B, S] int64, dense [B, N] float32)."""
    return FeatureHasher().encode(features)


@dataclasses.dataclass(frozen=True)
class RankerConfig:
    kind: str = "deepfm"  # "deepfm" | "mmoe"
    tasks: tuple[str, ...] = ("purchase",)  # heads, a subset of TASKS in TASKS order
    sparse: tuple[str, ...] = SPARSE
    dense: tuple[str, ...] = DENSE
    buckets: tuple[int, ...] = tuple(DEFAULT_BUCKETS[f] for f in SPARSE)
    embed_dim: int = 8
    hidden: tuple[int, ...] = (128, 64)  # DeepFM deep MLP / MMoE expert MLP (last = expert dim)
    dropout: float = 0.1
    n_experts: int = 4  # MMoE
    tower_hidden: tuple[int, ...] = (32,)  # MMoE per-task towers
    esmm: bool = True  # MMoE: p(cart) = p(click)·p(cart|click), p(purchase) = p(click)·p(purchase|click)
    dense_mean: tuple[float, ...] = ()  # standardisation of DENSE (from the training split)
    dense_std: tuple[float, ...] = ()
    feature_version: int = FEATURE_VERSION
    # trained with the shown position (models.position_bias, PAL): the outputs, served without
    # one, are "if shown at the top" probabilities; the forward pass is the same either way
    position_debias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("deepfm", "mmoe"):
            raise ValueError(f"unknown ranker kind {self.kind!r}")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks must be a subset of {TASKS}, got {self.tasks}")
        if list(self.tasks) != [t for t in TASKS if t in self.tasks]:
            raise ValueError(f"tasks must be in {TASKS} order, got {self.tasks}")
        if len(self.buckets) != len(self.sparse):
            raise ValueError("one bucket count per sparse field")
        for name in ("dense_mean", "dense_std"):
            v = getattr(self, name)
            if v and len(v) != len(self.dense):
                raise ValueError(f"{name} needs {len(self.dense)} values")
        if self.kind == "deepfm" and len(self.tasks) != 1:
            raise ValueError("DeepFM is single-task: give exactly one task")
        if self.kind == "mmoe" and self.esmm and self.tasks[0] != "click":
            raise ValueError("ESMM needs the click head")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RankerConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        return cls(**kw)


def mlp(in_dim: int, hidden: Sequence[int], dropout: float, out_dim: int | None = None) -> nn.Sequential:
    """Linear-ReLU-Dropout blocks, then an optional linear output layer (no activation)."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    if out_dim is not None:
        layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


@dataclasses.dataclass
class Encoded:
    fields: Tensor  # [B, F, D] field vectors (sparse embeddings, then dense value·vector)
    first: Tensor  # [B, T] first-order (wide) term per task, bias included
    deep_in: Tensor  # [B, F·D] flattened field vectors


class FeatureEncoder(nn.Module):
    """(sparse hashes, dense) -> ``Encoded``. Shared by DeepFM and MMoE."""

    buckets: Tensor
    offsets: Tensor
    dense_mean: Tensor
    dense_std: Tensor

    def __init__(self, cfg: RankerConfig, n_first: int) -> None:
        super().__init__()
        s, n, d = len(cfg.sparse), len(cfg.dense), cfg.embed_dim
        buckets = torch.tensor(cfg.buckets, dtype=torch.int64)
        offsets = torch.cumsum(buckets, 0) - buckets
        self.register_buffer("buckets", buckets, persistent=False)  # [S]
        self.register_buffer("offsets", offsets, persistent=False)  # [S]
        mean = cfg.dense_mean or (0.0,) * n
        std = cfg.dense_std or (1.0,) * n
        self.register_buffer("dense_mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("dense_std", torch.tensor(std, dtype=torch.float32).clamp_min(1e-6),
                             persistent=False)
        total = int(buckets.sum())
        self.embed = nn.Embedding(total, d)  # [ΣB, D] second-order / deep vectors
        self.first_sparse = nn.Embedding(total, n_first)  # [ΣB, T] first-order weights
        self.dense_vec = nn.Parameter(torch.empty(n, d))  # [N, D]
        self.first_dense = nn.Linear(n, n_first)  # [N] -> [T], holds the global bias
        nn.init.normal_(self.embed.weight, std=0.01)
        nn.init.zeros_(self.first_sparse.weight)
        nn.init.normal_(self.dense_vec, std=0.01)
        self.out_dim = (s + n) * d
        self.n_fields = s + n

    def forward(self, sparse: Tensor, dense: Tensor) -> Encoded:
        idx = torch.remainder(sparse, self.buckets) + self.offsets  # [B, S]
        x = ((dense - self.dense_mean) / self.dense_std).clamp(-8.0, 8.0)  # [B, N]
        sv = self.embed(idx)  # [B, S, D]
        dv = x.unsqueeze(-1) * self.dense_vec  # [B, N, D]
        fields = torch.cat([sv, dv], dim=1)  # [B, F, D]
        first = self.first_sparse(idx).sum(1) + self.first_dense(x)  # [B, T]
        # The deep part reads the dense values only through their field vectors (x·v, the same
        # information): every input of the first Linear has the embeddings' scale, which INT8
        # dynamic quantization (one activation scale per tensor) needs to keep accuracy.
        return Encoded(fields, first, fields.flatten(1))  # deep_in [B, F·D]


class FMInteraction(nn.Module):
    """Second-order FM: [B, F, D] -> [B, D] (sum over D gives the FM scalar)."""

    def forward(self, fields: Tensor) -> Tensor:
        s = fields.sum(1)  # [B, D]
        return 0.5 * (s * s - (fields * fields).sum(1))


def log1mexp(logp: Tensor) -> Tensor:
    """log(1 - exp(logp)) for logp < 0, stable at both ends."""
    logp = logp.clamp(max=-1e-7)
    return torch.where(logp > -0.6931, torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp)))


class DeepFM(nn.Module):
    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        if cfg.kind != "deepfm":
            raise ValueError(f"config is for {cfg.kind!r}, not deepfm")
        self.config = cfg
        self.encoder = FeatureEncoder(cfg, n_first=1)
        self.fm = FMInteraction()
        self.deep = mlp(self.encoder.out_dim, cfg.hidden, cfg.dropout, out_dim=1)  # [B, F·D] -> [B, 1]

    def logits(self, sparse: Tensor, dense: Tensor) -> Tensor:
        e = self.encoder(sparse, dense)
        return e.first + self.fm(e.fields).sum(-1, keepdim=True) + self.deep(e.deep_in)  # [B, 1]

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        """Log-probabilities [B, 1] of the one task."""
        return F.logsigmoid(self.logits(sparse, dense))
