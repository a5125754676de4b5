"""A user x item dot product on the click logit: matrix factorisation inside the ranker.

The hidden truth of a shopper's click has a term no catalog or statistics feature carries:
the shopper's taste against the item's style, a dot product of two latent vectors. The
ranker's MLP over concatenated field vectors learns such a product only slowly; one explicit
dot of a per-user and a per-item vector (``RankerConfig.user_item_dim`` wide, each from its
own hashed table keyed like the sparse fields) adds it to the click logit, as factorisation
machines do for one pair of fields. Under ESMM the cart and purchase outputs are products
with the click probability, so they share it.

Shapes: B = batch, S = sparse fields, U = ``user_item_dim``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

USER_ITEM_FIELDS = ("user_id", "item_id")  # the pair, by RankerConfig.sparse name


class UserItemDot(nn.Module):
    """(sparse hashes [B, S]) -> [B, 1]: <user vector, item vector>."""

    buckets: Tensor
    cols: Tensor

    def __init__(self, sparse: tuple[str, ...], buckets: tuple[int, ...], dim: int) -> None:
        super().__init__()
        missing = [f for f in USER_ITEM_FIELDS if f not in sparse]
        if missing:
            raise ValueError(f"user_item_dim needs the sparse fields {missing}")
        cols = [sparse.index(f) for f in USER_ITEM_FIELDS]
        self.register_buffer("cols", torch.tensor(cols, dtype=torch.int64), persistent=False)  # [2]
        self.register_buffer("buckets", torch.tensor([buckets[c] for c in cols], dtype=torch.int64),
                             persistent=False)  # [2]
        self.user = nn.Embedding(int(self.buckets[0]), dim)  # [Bu, U]
        self.item = nn.Embedding(int(self.buckets[1]), dim)  # [Bi, U]
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)

    def forward(self, sparse: Tensor) -> Tensor:
        idx = torch.remainder(sparse.index_select(1, self.cols), self.buckets)  # [B, 2]
        return (self.user(idx[:, 0]) * self.item(idx[:, 1])).sum(-1, keepdim=True)  # [B, 1]


def add_to_click(logits: Tensor, dot: Tensor) -> Tensor:
    """[B, T] + the dot [B, 1] on the first head (click for the MMoE, the one head of DeepFM)."""
    return torch.cat([logits[:, :1] + dot, logits[:, 1:]], dim=1)
