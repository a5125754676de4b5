"""MMoE multi-task ranker (Ma et al., KDD 2018) with ESMM heads (Ma et al., SIGIR 2018).

Shapes: B = batch, K = ``n_experts``, H = expert output size (``hidden[-1]``), T = tasks.

    (sparse, dense) ─► FeatureEncoder (the one DeepFM uses) ─► x = [field vectors, FM vector]
    x ─► K shared experts (MLPs) ─► E [B, K, H]
    per task t: gate_t(x) = softmax [B, K] ─► h_t = Σ_k gate·E ─► tower_t(h_t) + first_t ─► z_t

With ``esmm`` (default) the towers for cart and purchase model the *post-click* rates and the
outputs are products over the full impression space::

    p_click = sigmoid(z_click)
    p_cart = p_click · sigmoid(z_cart|click)         p_purchase = p_click · sigmoid(z_purchase|click)

so all three heads are trained on every impression (no sample-selection bias from training
the conversion rate on clicked items only, and the purchase head shares the click signal,
which is ~30x denser than purchases). ``forward`` returns log-probabilities [B, T] in
``TASKS`` order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.deepfm import FeatureEncoder, FMInteraction, RankerConfig, mlp


class MMoE(nn.Module):
    def __init__(self, cfg: RankerConfig) -> None:
        super().__init__()
        if cfg.kind != "mmoe":
            raise ValueError(f"config is for {cfg.kind!r}, not mmoe")
        self.config = cfg
        t = len(cfg.tasks)
        self.encoder = FeatureEncoder(cfg, n_first=t)
        self.fm = FMInteraction()
        in_dim = self.encoder.out_dim + cfg.embed_dim  # [B, F·D + D]
        h = cfg.hidden[-1]
        # K experts: [B, in] -> [B, H] each
        self.experts = nn.ModuleList(mlp(in_dim, cfg.hidden, cfg.dropout) for _ in range(cfg.n_experts))
        # one gate per task: [B, in] -> [B, K]
        self.gates = nn.ModuleList(nn.Linear(in_dim, cfg.n_experts) for _ in range(t))
        # one tower per task: [B, H] -> [B, 1]
        self.towers = nn.ModuleList(mlp(h, cfg.tower_hidden, cfg.dropout, out_dim=1) for _ in range(t))

    def logits(self, sparse: Tensor, dense: Tensor) -> Tensor:
        """Raw tower logits [B, T] (post-click rates for cart/purchase under ESMM)."""
        e = self.encoder(sparse, dense)
        x = torch.cat([e.deep_in, self.fm(e.fields)], dim=1)  # [B, in]
        experts = torch.stack([m(x) for m in self.experts], dim=1)  # [B, K, H]
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # [B, K, 1]
            outs.append(tower((g * experts).sum(1)))  # [B, 1]
        return torch.cat(outs, dim=1) + e.first  # [B, T]

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        """Log-probabilities [B, T] over the full impression space."""
        logp = F.logsigmoid(self.logits(sparse, dense))  # [B, T]
        if not self.config.esmm:
            return logp
        click = logp[:, :1]  # tasks[0] == "click" (checked by the config)
        return torch.cat([click, click + logp[:, 1:]], dim=1)
