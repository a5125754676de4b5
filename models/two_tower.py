"""Two-tower retrieval model: a session/user tower and an item tower meeting in one unit sphere.

Shapes: B = batch, L = ``max_len`` recent items, D = ``dim``, T = title tokens, C = candidates.

* Item tower: ``id_emb(item)`` plus optional content features (category, brand, price bucket,
  hashed title tokens), summed and L2-normalised. Item id 0 means "no trained id": a catalog item
  with no interactions is embedded from its content alone (train with ``id_dropout`` > 0 so that
  path learns to stand on its own).
* User/session tower: the last L item ids, embedded with the item tower's id table (shared by
  default), pooled by recency-weighted additive attention (query = the last item and the session
  mean, a learned bias per recency position), concatenated with the last item and optional
  categorical user/context features, projected to D and L2-normalised.
* Score = cosine / temperature. Training loss: sampled softmax over in-batch labels plus optional
  uniformly sampled items, with logQ correction (subtract the log of each candidate's expected
  count under the sampler) and accidental hits masked.

The config dataclass travels in the checkpoint: ``TwoTower.load(path)`` rebuilds the model.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FORMAT = "recsys.two_tower/1"


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig:
    n_items: int  # id-embedding rows, row 0 = padding / "no id"
    dim: int = 128  # output dimension (64..128 for the HNSW index)
    max_len: int = 20  # recent items the session tower reads
    # optional item content features (0 = off); value 0 of each feature means "unknown"
    n_categories: int = 0
    n_brands: int = 0
    n_price_buckets: int = 0
    title_buckets: int = 0  # hashed title-token vocabulary
    # optional categorical user/context features: (name, cardinality), value 0 = unknown
    user_features: tuple[tuple[str, int], ...] = ()
    share_embeddings: bool = True  # session tower reads the item tower's id table
    dropout: float = 0.2
    id_dropout: float = 0.0  # training-time chance to hide an item's id (cold-start path)
    temperature: float = 0.07

    def __post_init__(self) -> None:
        if self.n_items < 2:
            raise ValueError(f"n_items must be >= 2 (row 0 is padding), got {self.n_items}")
        if self.dim < 8 or self.max_len < 1 or self.temperature <= 0:
            raise ValueError("dim must be >= 8, max_len >= 1 and temperature > 0")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.id_dropout < 1.0):
            raise ValueError("dropout and id_dropout must be in [0, 1)")

    @property
    def has_content(self) -> bool:
        return any((self.n_categories, self.n_brands, self.n_price_buckets, self.title_buckets))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["user_features"] = [list(x) for x in self.user_features]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TwoTowerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown two-tower config keys {sorted(unknown)}")
        kw = dict(d)
        kw["user_features"] = tuple((str(n), int(c)) for n, c in kw.get("user_features", ()))
        return cls(**kw)


@dataclasses.dataclass
class ItemFeatures:
    """Optional content features, one row per item; absent fields are treated as unknown."""

    category: Tensor | None = None  # [N] int64
    brand: Tensor | None = None  # [N] int64
    price_bucket: Tensor | None = None  # [N] int64
    title_tokens: Tensor | None = None  # [N, T] int64, 0-padded (see hash_title_tokens)

    def take(self, idx: Tensor) -> ItemFeatures:
        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx]

        return ItemFeatures(*(pick(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def to(self, device: torch.device | str) -> ItemFeatures:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device)

        return ItemFeatures(*(mv(getattr(self, f.name)) for f in dataclasses.fields(self)))


def hash_title_tokens(titles: Sequence[str], buckets: int, max_tokens: int = 16) -> Tensor:
    """Lower-cased whitespace tokens -> stable crc32 buckets in ``1..buckets`` -> [N, max_tokens]."""
    out = np.zeros((len(titles), max_tokens), dtype=np.int64)
    for i, title in enumerate(titles):
        toks = title.lower().split()[:max_tokens]
        for j, tok in enumerate(toks):
            out[i, j] = zlib.crc32(tok.encode("utf-8")) % buckets + 1
    return torch.from_numpy(out)


def hashed_id(value: str, buckets: int) -> int:
    """0 = unknown / feature off, else a stable crc32 bucket in ``1..buckets``."""
    return 0 if not value or buckets <= 0 else zlib.crc32(value.encode("utf-8")) % buckets + 1


def price_bucket(price: float, buckets: int, scale: float = 1.0) -> int:
    """0 = unknown / feature off, else ``1 + floor(scale * log2(1 + price))`` capped at ``buckets``."""
    if buckets <= 0 or not np.isfinite(price) or price < 0:
        return 0
    return min(buckets, 1 + int(scale * np.log2(1.0 + price)))


def id_rows(items: Sequence[str], vocab: Mapping[str, int], n_items: int) -> Tensor:
    """[N] id-embedding rows of ``items`` by a version's vocabulary (``item_ids.json``); 0, "no
    trained id", for an item it does not know or a row outside the model's table."""
    return torch.tensor([r if 0 < (r := vocab.get(i, 0)) < n_items else 0 for i in items],
                        dtype=torch.int64)


class CatalogContent(Protocol):
    """What the item tower reads of a catalog row (``streams.embeddings.CatalogInfo``, ...)."""

    @property
    def category(self) -> str: ...
    @property
    def brand(self) -> str: ...
    @property
    def price(self) -> float: ...
    @property
    def title(self) -> str: ...


def content_features(rows: Sequence[CatalogContent | None], cfg: TwoTowerConfig,
                     price_scale: float = 1.0) -> ItemFeatures:
    """THE encoding of catalog rows for the item tower, one row each (None: unknown item, all
    features 0): the trainer (``models.tower_retrain``) and the embeddings dataflow
    (``streams.tower_embedder``) both call it, so a model sees at serving time what it was
    trained on."""

    def col(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.int64)

    return ItemFeatures(
        category=col([hashed_id(r.category, cfg.n_categories) if r else 0 for r in rows]),
        brand=col([hashed_id(r.brand, cfg.n_brands) if r else 0 for r in rows]),
        price_bucket=col([price_bucket(r.price, cfg.n_price_buckets, price_scale) if r else 0
                          for r in rows]),
        title_tokens=hash_title_tokens([r.title if r else "" for r in rows], max(1, cfg.title_buckets)),
    )


class ItemTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.id_emb = nn.Embedding(cfg.n_items, d, padding_idx=0)  # [n_items, D]
        nn.init.normal_(self.id_emb.weight, std=d**-0.5)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()

        def table(n: int) -> nn.Embedding | None:
            return nn.Embedding(n + 1, d, padding_idx=0) if n > 0 else None

        self.category_emb = table(cfg.n_categories)  # [n_categories+1, D]
        self.brand_emb = table(cfg.n_brands)  # [n_brands+1, D]
        self.price_emb = table(cfg.n_price_buckets)  # [n_price_buckets+1, D]
        self.title_bag = (  # mean of hashed title tokens -> [N, D]
            nn.EmbeddingBag(cfg.title_buckets + 1, d, mode="mean", padding_idx=0)
            if cfg.title_buckets > 0
            else None
        )
        self.content_mlp = (  # [N, D] -> [N, D]
            nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) if cfg.has_content else None
        )

    def forward(self, item_ids: Tensor, features: ItemFeatures | None = None) -> Tensor:
        """[N] item ids (0 = no id) + optional features -> [N, D] unit vectors."""
        vec = self.id_emb(item_ids)  # [N, D]
        if self.content_mlp is not None and features is not None:
            if self.training and self.cfg.id_dropout > 0:
                keep = torch.rand(item_ids.shape, device=vec.device) >= self.cfg.id_dropout
                vec = vec * keep.unsqueeze(-1).to(vec.dtype)
            content = torch.zeros_like(vec)  # [N, D]
            for emb, val in (
                (self.category_emb, features.category),
                (self.brand_emb, features.brand),
                (self.price_emb, features.price_bucket),
            ):
                if emb is not None and val is not None:
                    content = content + emb(val)
            if self.title_bag is not None and features.title_tokens is not None:
                content = content + self.title_bag(features.title_tokens)  # [N, T] -> [N, D]
            vec = vec + self.content_mlp(content)
        return F.normalize(vec, dim=-1)


class SessionTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig, shared_ids: nn.Embedding | None) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.own_emb = None if shared_ids is not None else nn.Embedding(cfg.n_items, d, 0)
        self._shared = [shared_ids]  # a list: not registered twice as a sub-module
        self.pos_emb = nn.Embedding(cfg.max_len, d)  # recency position 0 = most recent, [L, D]
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        self.recency_bias = nn.Parameter(torch.zeros(cfg.max_len))  # [L]
        self.w_last = nn.Linear(d, d, bias=False)  # query from the last item
        self.w_mean = nn.Linear(d, d, bias=False)  # query from the session mean
        self.w_key = nn.Linear(d, d)  # keys from item + recency position
        self.v = nn.Linear(d, 1, bias=False)  # additive attention score
        self.feature_embs = nn.ModuleDict(
            {name: nn.Embedding(card + 1, d, padding_idx=0) for name, card in cfg.user_features}
        )
        n_parts = 2 + (1 if cfg.user_features else 0)
        self.proj = nn.Linear(n_parts * d, d)  # [global; last; context] -> D
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def ids(self) -> nn.Embedding:
        emb = self.own_emb if self.own_emb is not None else self._shared[0]
        assert emb is not None
        return emb

    def forward(self, prefix: Tensor, user_feats: Mapping[str, Tensor] | None = None) -> Tensor:
        """[B, L] right-aligned item ids (0 = pad, last column = most recent) -> [B, D] unit."""
        cfg = self.cfg
        prefix = prefix[:, -cfg.max_len :]
        n = prefix.shape[1]
        mask = prefix > 0  # [B, L]
        h = self.drop(self.ids(prefix))  # [B, L, D]
        pos = torch.arange(n - 1, -1, -1, device=prefix.device)  # [L] recency of each column
        maskf = mask.unsqueeze(-1).to(h.dtype)
        length = maskf.sum(1).clamp_min(1.0)  # [B, 1]
        mean = (h * maskf).sum(1) / length  # [B, D]
        last = h[:, -1]  # [B, D] (prefixes are right-aligned and non-empty)
        keys = self.w_key(h + self.pos_emb(pos))  # [B, L, D]
        query = (self.w_last(last) + self.w_mean(mean)).unsqueeze(1)  # [B, 1, D]
        score = self.v(torch.sigmoid(keys + query)).squeeze(-1)  # [B, L]
        score = score + self.recency_bias[pos]
        score = score.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(score, dim=-1).nan_to_num(0.0)  # [B, L]
        pooled = torch.einsum("bl,bld->bd", alpha, h)  # [B, D]
        parts = [pooled, last]
        if cfg.user_features:
            ctx = torch.zeros_like(pooled)  # [B, D]
            for name, emb in self.feature_embs.items():
                if user_feats is not None and name in user_feats:
                    ctx = ctx + emb(user_feats[name])
            parts.append(ctx)
        out = self.proj(torch.cat(parts, dim=-1))  # [B, D]
        return F.normalize(out, dim=-1)


class TwoTower(nn.Module):
    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.item_tower = ItemTower(cfg)
        self.session_tower = SessionTower(
            cfg, self.item_tower.id_emb if cfg.share_embeddings else None
        )

    # --- embeddings -------------------------------------------------------------------------
    def user_vectors(self, prefix: Tensor, user_feats: Mapping[str, Tensor] | None = None) -> Tensor:
        return self.session_tower(prefix, user_feats)  # [B, D]

    def item_vectors(self, item_ids: Tensor, features: ItemFeatures | None = None) -> Tensor:
        return self.item_tower(item_ids, features)  # [N, D]

    @torch.no_grad()
    def all_item_vectors(self, features: ItemFeatures | None = None, chunk: int = 65536) -> Tensor:
        """[n_items, D] for every id (row 0 is the padding row's vector: never rank it)."""
        dev = self.item_tower.id_emb.weight.device
        out = []
        for start in range(0, self.config.n_items, chunk):
            ids = torch.arange(start, min(start + chunk, self.config.n_items), device=dev)
            out.append(self.item_tower(ids, features.take(ids) if features is not None else None))
        return torch.cat(out)

    @torch.no_grad()
    def score_all(self, prefix: Tensor, item_matrix: Tensor | None = None) -> Tensor:
        """[B, L] prefixes -> [B, n_items] cosine scores; padding column is -inf."""
        items = self.all_item_vectors() if item_matrix is None else item_matrix
        scores = self.user_vectors(prefix) @ items.T
        scores[:, 0] = float("-inf")
        return scores

    # --- training ---------------------------------------------------------------------------
    def sampled_softmax_loss(
        self,
        prefix: Tensor,
        labels: Tensor,
        sampler: LogQSampler,
        user_feats: Mapping[str, Tensor] | None = None,
        item_features: ItemFeatures | None = None,
    ) -> Tensor:
        """In-batch (+ uniform) negatives with logQ correction; accidental hits masked."""
        b = labels.shape[0]
        cand_ids = sampler.candidates(labels)  # [C], first B are the batch labels
        u = self.user_vectors(prefix, user_feats)  # [B, D]
        feats = item_features.take(cand_ids) if item_features is not None else None
        v = self.item_vectors(cand_ids, feats)  # [C, D]
        logits = u @ v.T / self.config.temperature  # [B, C]
        logits = logits - sampler.log_expected_count(cand_ids, b)  # logQ correction
        hit = cand_ids.unsqueeze(0) == labels.unsqueeze(1)  # [B, C]
        hit[:, :b].fill_diagonal_(False)
        logits = logits.masked_fill(hit, float("-inf"))
        return F.cross_entropy(logits, torch.arange(b, device=labels.device))

    # --- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write config + weights atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        blob = {"format": FORMAT, "config": self.config.to_dict(), "state_dict": state}
        if extra:
            blob["extra"] = dict(extra)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(blob, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> TwoTower:
        blob = torch.load(Path(path), map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not a two-tower checkpoint ({FORMAT})")
        model = cls(TwoTowerConfig.from_dict(blob["config"]))
        model.load_state_dict(blob["state_dict"])
        model.eval()
        return model


class LogQSampler:
    """Candidates = batch labels + ``n_uniform`` uniform item ids; logQ = log expected count.

    An item j appears among a batch's candidates ``B * q_j + M / (n_items - 1)`` times in
    expectation, where ``q_j`` is its share of training labels (popularity) and M = n_uniform.
    """

    def __init__(
        self, label_counts: npt.ArrayLike, n_uniform: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        counts = torch.as_tensor(np.asarray(label_counts, dtype=np.float64), dtype=torch.float64)
        counts[0] = 0.0
        if counts.sum() <= 0:
            raise ValueError("label counts are all zero")
        self.q = (counts / counts.sum()).to(torch.float32).to(device)  # [n_items]
        self.n_items = int(counts.shape[0])
        self.n_uniform = int(n_uniform)
        self.device = torch.device(device)

    def candidates(self, labels: Tensor) -> Tensor:
        if self.n_uniform <= 0:
            return labels
        neg = torch.randint(1, self.n_items, (self.n_uniform,), device=labels.device)
        return torch.cat([labels, neg])

    def log_expected_count(self, cand_ids: Tensor, batch: int) -> Tensor:
        expected = batch * self.q[cand_ids] + self.n_uniform / (self.n_items - 1)
        return torch.log(expected.clamp_min(1e-12))  # [C]
