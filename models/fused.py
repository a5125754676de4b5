"""Serving form of a trained ``MMoE``: the same function, folded into a few large ops.

The training module is written for clarity (one ``nn.Linear`` per expert, gate and tower; a
``[B, F·D]`` input built from every field vector). At serving time, for 500 candidates on one
core, most of its time goes to per-op overhead and elementwise passes, not to arithmetic.
``FusedMMoE`` computes the same outputs from the same weights (equal up to float rounding;
``tests/test_fused.py`` checks it) with:

* the dense fields' vectors folded into the first layer: the first layer sees
  ``x_n · v_n`` (value times field vector) for each dense field n, so
  ``W·(x_n v_n) = x_n (W v_n)`` and the dense block of ``W`` [H, N·D] becomes [H, N];
  the FM term likewise needs only ``Σ_n x_n v_n`` and ``Σ_n x_n² v_n²``;
* every expert's first layer and every gate in ONE matrix product;
* the experts' second layers, the gate mixing and the task towers as batched matrix
  products (``bmm``) instead of one module call per expert / task;
* optionally (``dtype=torch.bfloat16``) the MLP weights and activations in bfloat16, with
  float32 accumulation in the matrix products (oneDNN), on CPUs with native bf16 dot products
  (AVX512-BF16 / AMX: ``bf16_native()``). The embeddings, the FM and first-order terms, the
  gate softmax and the final logits stay float32. 0.5-0.8x the float form's time on such a
  CPU, depending on the host's phase (BENCHMARKS.md); served probabilities move by ~2e-4 on
  a trained MMoE (``tests/test_rankers.py``), at most ~2e-3 on random trained-scale weights
  (``tests/test_fused.py``).

Shapes: B = batch, S = sparse fields, N = dense fields, D = embed dim, K = experts,
H1 / H = expert layer sizes (``hidden``), T = tasks, G = tower hidden size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.mmoe import MMoE


def _linears(seq: nn.Module) -> list[nn.Linear]:
    return [m for m in seq.children() if isinstance(m, nn.Linear)]


class FusedMMoE(nn.Module):
    """``MMoE.forward`` for inference (no dropout), from a trained ``MMoE``'s weights."""

    buckets: Tensor
    offsets: Tensor
    dense_mean: Tensor
    dense_std: Tensor
    dense_vec: Tensor
    dense_vec_sq: Tensor
    w2: Tensor
    b2: Tensor
    wt1: Tensor
    bt1: Tensor
    wt2: Tensor
    bt2: Tensor

    def __init__(self, m: MMoE, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"FusedMMoE computes in float32 or bfloat16, not {dtype}")
        self.dtype = dtype
        cfg = m.config
        if len(cfg.hidden) != 2 or len(cfg.tower_hidden) != 1:
            raise ValueError("FusedMMoE folds experts of two layers and towers of one hidden layer")
        enc = m.encoder
        s, n, d = len(cfg.sparse), len(cfg.dense), cfg.embed_dim
        k, t = cfg.n_experts, len(cfg.tasks)
        self.k, self.t, self.h1 = k, t, cfg.hidden[0]
        self.esmm = cfg.esmm
        with torch.no_grad():
            self.register_buffer("buckets", enc.buckets.clone())  # [S]
            self.register_buffer("offsets", enc.offsets.clone())  # [S]
            self.register_buffer("dense_mean", enc.dense_mean.clone())  # [N]
            self.register_buffer("dense_std", enc.dense_std.clone())  # [N]
            self.embed = nn.Embedding.from_pretrained(enc.embed.weight.clone())  # [ΣB, D]
            self.first_sparse = nn.Embedding.from_pretrained(enc.first_sparse.weight.clone())  # [ΣB, T]
            self.first_dense = nn.Linear(n, t)
            self.first_dense.load_state_dict(enc.first_dense.state_dict())
            v = enc.dense_vec.detach()  # [N, D]
            self.register_buffer("dense_vec", v.clone())  # [N, D]
            self.register_buffer("dense_vec_sq", (v * v).clone())  # [N, D]
            # layer 1 of every expert + every gate, over the input [S·D sparse | N dense | D fm]
            rows, biases = [], []
            firsts: list[nn.Linear] = [_linears(e)[0] for e in m.experts]
            firsts += [g for g in m.gates if isinstance(g, nn.Linear)]
            for lin in firsts:
                w = lin.weight.detach()  # [out, (S+N)·D + D]
                w_sparse = w[:, : s * d]  # [out, S·D]
                w_dense = w[:, s * d: (s + n) * d].reshape(-1, n, d)  # [out, N, D]
                w_fm = w[:, (s + n) * d:]  # [out, D]
                rows.append(torch.cat([w_sparse, (w_dense * v).sum(-1), w_fm], dim=1))
                biases.append(lin.bias.detach())
            self.first = nn.Linear(s * d + n + d, k * self.h1 + t * k)  # [B, in'] -> [B, K·H1 + T·K]
            self.first.weight.copy_(torch.cat(rows, dim=0))
            self.first.bias.copy_(torch.cat(biases))
            # layer 2 of each expert: [K, H1, H] + [K, 1, H]; towers: [T, H, G] + [T, 1, G],
            # then [T, G, 1] + [T, 1, 1]
            l2 = [_linears(e)[1] for e in m.experts]
            self.register_buffer("w2", torch.stack([lin.weight.detach().t() for lin in l2]).contiguous())
            self.register_buffer("b2", torch.stack([lin.bias.detach() for lin in l2]).unsqueeze(1))
            ta = [_linears(tw)[0] for tw in m.towers]
            tb = [_linears(tw)[1] for tw in m.towers]
            self.register_buffer("wt1", torch.stack([lin.weight.detach().t() for lin in ta]).contiguous())
            self.register_buffer("bt1", torch.stack([lin.bias.detach() for lin in ta]).unsqueeze(1))
            self.register_buffer("wt2", torch.stack([lin.weight.detach().t() for lin in tb]).contiguous())
            self.register_buffer("bt2", torch.stack([lin.bias.detach() for lin in tb]).unsqueeze(1))
            if dtype != torch.float32:  # the MLP in dtype; embeddings and first-order terms stay
                self.first.to(dtype)
                for name in ("w2", "b2", "wt1", "bt1", "wt2", "bt2"):
                    setattr(self, name, getattr(self, name).to(dtype))

    def logits(self, sparse: Tensor, dense: Tensor) -> Tensor:
        b = sparse.shape[0]
        idx = torch.remainder(sparse, self.buckets) + self.offsets  # [B, S]
        x = ((dense - self.dense_mean) / self.dense_std).clamp(-8.0, 8.0)  # [B, N]
        sv = self.embed(idx)  # [B, S, D]
        total = sv.sum(1) + x @ self.dense_vec  # [B, D] Σ_f v_f
        squares = (sv * sv).sum(1) + (x * x) @ self.dense_vec_sq  # [B, D] Σ_f v_f²
        fm = 0.5 * (total * total - squares)  # [B, D]
        low = self.dtype != torch.float32
        inp = torch.cat([sv.flatten(1), x, fm], dim=1)  # [B, S·D + N + D]
        z = self.first(inp.to(self.dtype) if low else inp)  # [B, K·H1 + T·K]
        kh1 = self.k * self.h1
        h1 = torch.relu(z[:, :kh1]).reshape(b, self.k, self.h1).transpose(0, 1)  # [K, B, H1]
        experts = torch.relu(torch.baddbmm(self.b2, h1, self.w2)).transpose(0, 1)  # [B, K, H]
        zg = z[:, kh1:].reshape(b, self.t, self.k)  # [B, T, K] gate logits
        zg = zg.float() if low else zg
        eg = torch.exp(zg - zg.amax(-1, keepdim=True))  # softmax by hand: ATen's is slow for K=4
        gates = eg / eg.sum(-1, keepdim=True)  # [B, T, K]
        gates = gates.to(self.dtype) if low else gates
        mixed = torch.bmm(gates, experts).transpose(0, 1)  # [T, B, H]
        g = torch.relu(torch.baddbmm(self.bt1, mixed, self.wt1))  # [T, B, G]
        towers = torch.baddbmm(self.bt2, g, self.wt2).squeeze(-1).t()  # [B, T]
        towers = towers.float() if low else towers
        first = self.first_sparse(idx).sum(1) + self.first_dense(x)  # [B, T]
        return towers + first

    def forward(self, sparse: Tensor, dense: Tensor) -> Tensor:
        """Log-probabilities [B, T], as ``MMoE.forward``."""
        logp = F.logsigmoid(self.logits(sparse, dense))  # [B, T]
        if not self.esmm:
            return logp
        click = logp[:, :1]
        return torch.cat([click, click + logp[:, 1:]], dim=1)


def bf16_native() -> bool:
    """Whether this CPU has native bf16 dot products for oneDNN (AVX512-BF16 or AMX): without
    them bfloat16 matrix products are emulated and slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False
