"""The fused serving form of MMoE computes the same function as the training module."""

from __future__ import annotations

import pytest
import torch

from models.deepfm import RankerConfig
from models.fused import FusedMMoE
from models.mmoe import MMoE
from models.ranker_runtime import fuse


def _trained_like(cfg: RankerConfig, seed: int) -> MMoE:
    """An MMoE whose every parameter is random at a trained model's scale (the default init
    leaves first-order weights at zero, which would hide a mistake in folding them)."""
    torch.manual_seed(seed)
    m = MMoE(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3)
    return m


@pytest.mark.parametrize(("experts", "esmm", "standardise"),
                         [(4, True, True), (2, False, False), (3, True, False)])
def test_fused_equals_training_module(experts, esmm, standardise):
    n_dense = len(RankerConfig().dense)
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"), n_experts=experts, esmm=esmm,
                       hidden=(48, 24), tower_hidden=(16,),
                       dense_mean=tuple(0.1 * j for j in range(n_dense)) if standardise else (),
                       dense_std=tuple(1.0 + 0.2 * j for j in range(n_dense)) if standardise else ())
    m = _trained_like(cfg, seed=experts)
    fused = FusedMMoE(m).eval()
    gen = torch.Generator().manual_seed(1)
    for b in (1, 7, 500):
        sparse = torch.randint(0, 2**31, (b, len(cfg.sparse)), generator=gen)
        dense = 3.0 * torch.randn(b, len(cfg.dense), generator=gen)
        with torch.inference_mode():
            want, got = m(sparse, dense), fused(sparse, dense)
        assert got.shape == (b, 3)
        # float32, summed in another order: relative error grows with the 24 dense fields
        torch.testing.assert_close(got, want, rtol=5e-5, atol=1e-5)


def test_bf16_form_stays_close_to_float():
    """The bfloat16 form (MLP weights and activations in bf16, float32 accumulation) moves
    probabilities by about 1e-3 at most; float32 gates, FM and first-order terms."""
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"), hidden=(128, 64))
    m = _trained_like(cfg, seed=5)
    with torch.no_grad():  # trained scale: unit-variance pre-activations, not ~50
        for e in m.experts:
            for lin in e.children():
                if isinstance(lin, torch.nn.Linear):
                    lin.weight.mul_(1.0 / (0.3 * lin.in_features ** 0.5))
    fused, low = FusedMMoE(m).eval(), FusedMMoE(m, torch.bfloat16).eval()
    assert low.w2.dtype == torch.bfloat16 and low.embed.weight.dtype == torch.float32
    gen = torch.Generator().manual_seed(2)
    sparse = torch.randint(0, 2**31, (500, len(cfg.sparse)), generator=gen)
    dense = torch.randn(500, len(cfg.dense), generator=gen)
    with torch.inference_mode():
        want, got = fused(sparse, dense).exp(), low(sparse, dense)
    assert got.dtype == torch.float32 and got.shape == (500, 3)
    diff = (got.exp() - want).abs().max().item()
    print(f"bf16 vs float32: max |dp| {diff:.2e}")
    assert 0 < diff < 0.01, diff
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        FusedMMoE(m, torch.float16)


def test_shapes_it_does_not_fold_are_served_unfused():
    cfg = RankerConfig(kind="mmoe", tasks=("click", "cart", "purchase"), hidden=(32, 16, 8))
    m = MMoE(cfg)
    with pytest.raises(ValueError, match="two layers"):
        FusedMMoE(m)
    assert fuse(m) is m
    assert isinstance(fuse(MMoE(RankerConfig(kind="mmoe", tasks=("click", "purchase")))), FusedMMoE)


def test_timing_tool_reports_every_form(tmp_path):
    import json

    from recsys.bench.fused import main

    assert main(["--candidates", "16", "--rounds", "2", "--report", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert set(r["median_ms"]) == {"float", "int8", "fused", "fused_bf16"}
    assert all(v > 0 for v in r["median_ms"].values())
    assert r["fused_vs_int8"] == round(r["median_ms"]["fused"] / r["median_ms"]["int8"], 3)
