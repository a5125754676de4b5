"""What the scorer loads: a trained ranker checkpoint -> ``Ranker.predict(features) -> [n, 3]``.

    ranker = load_ranker("…/models/ranker/v3")          # a registry version folder or model.pt
    probs = ranker.predict(assemble_columns(...))       # [n, 3]: p_click, p_cart, p_purchase
    probs = ranker.predict([assemble(...), ...])        # the same from feature dicts

* All candidates of a request are scored in ONE batch; torch intra-op threads are set to 1
  (one scorer process per core); the model is in eval mode and runs under ``inference_mode``.
* Outputs are calibrated per head with the calibrators stored in the checkpoint.
* A single-task model (DeepFM) fills only its own column; the others are NaN (``ranker.tasks``
  says which heads are real). The multi-task MMoE fills all three.
* ``quantize=True`` applies INT8 dynamic quantization to the Linear layers at load time
  (``torch.ao.quantization.quantize_dynamic``; the weights are stored in float).
* A checkpoint of another ``FEATURE_VERSION`` is refused.

Checkpoint format (``torch.save``, loadable with ``weights_only=True``): ``format``, ``config``
(``RankerConfig.to_dict``), ``state_dict``, ``calibration`` ({head: calibrator dict}),
``version`` and ``meta``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from features.ranking_features import FEATURE_VERSION, FeatureBatch
from models.calibration import Calibrator, Identity, calibrator_from_dict
from models.deepfm import TASKS, DeepFM, FeatureHasher, RankerConfig
from models.fused import FusedMMoE, bf16_native
from models.mmoe import MMoE

FORMAT = "recsys.ranker/1"


class RankerError(ValueError):
    """Not a ranker checkpoint, or one this code cannot serve."""


def build_model(cfg: RankerConfig) -> DeepFM | MMoE:
    return DeepFM(cfg) if cfg.kind == "deepfm" else MMoE(cfg)


def save_checkpoint(path: str | Path, model: nn.Module, calibration: Mapping[str, Calibrator],
                    version: str, meta: Mapping[str, Any] | None = None) -> Path:
    """Config + float weights + calibrators, written atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)  # unwrap DDP
    cfg = cast(RankerConfig, inner.config)
    blob = {
        "format": FORMAT, "config": cfg.to_dict(), "version": version,
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "calibration": {h: c.to_dict() for h, c in calibration.items()},
        "meta": json.loads(json.dumps(dict(meta or {}), default=str)),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def _resolve(path: str | Path) -> tuple[Path, str | None]:
    """A model file, or a folder (a registry version: its manifest names the file)."""
    p = Path(path)
    if p.is_dir():
        manifest = p / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text())
            return p / (m.get("model_file") or "model.pt"), f"{m.get('name')}-{m.get('version')}"
        return p / "model.pt", None
    return p, None


def quantize(model: nn.Module) -> nn.Module:
    """INT8 dynamic quantization of every Linear layer (weights int8, activations quantized on
    the fly). Embeddings stay float."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


class Ranker:
    """Batch scorer for one checkpoint. ``predict`` may be called from several threads: the
    model is read-only in inference mode and the hash memo is a dict (single set/get operations
    are atomic under the GIL; a race only recomputes a hash)."""

    def __init__(self, model: nn.Module, cfg: RankerConfig, calibration: Mapping[str, Calibrator],
                 version: str, quantized: bool = False, meta: Mapping[str, Any] | None = None,
                 bf16: bool = False) -> None:
        self.model = model.eval()
        self.config = cfg
        self.tasks = cfg.tasks
        self.quantized = quantized
        self.bf16 = bf16
        self.version = version + self.precision_suffix
        self.meta = dict(meta or {})
        self.calibration = {t: calibration.get(t, Identity()) for t in cfg.tasks}
        self._cols = [TASKS.index(t) for t in cfg.tasks]
        self._hasher = FeatureHasher(cfg.sparse, cfg.dense)
        self._checked = False

    @property
    def precision_suffix(self) -> str:
        """What the version string says about how the weights are served: "+int8", "+bf16"
        or nothing (float32)."""
        return "+int8" if self.quantized else "+bf16" if self.bf16 else ""

    def _check(self, row: Mapping[str, Any]) -> None:
        missing = [n for n in (*self.config.sparse, *self.config.dense) if n not in row]
        if missing:
            raise RankerError(f"features lack {missing} (model expects FEATURE_VERSION "
                              f"{self.config.feature_version})")
        self._checked = True

    def raw(self, sparse: npt.NDArray[np.int64], dense: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """Uncalibrated probabilities [n, T] for encoded features."""
        with torch.inference_mode():
            logp = self.model(torch.from_numpy(np.ascontiguousarray(sparse)),
                              torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)))
        return np.exp(logp.double().numpy())

    def predict_arrays(self, sparse: npt.NDArray[np.int64], dense: npt.NDArray[np.float32],
                       calibrated: bool = True) -> npt.NDArray[np.float64]:
        """[n, 3] in ``TASKS`` order; heads the model lacks are NaN."""
        p = self.raw(sparse, dense)
        out = np.full((p.shape[0], len(TASKS)), np.nan)
        for j, (t, col) in enumerate(zip(self.tasks, self._cols, strict=True)):
            out[:, col] = self.calibration[t].predict(p[:, j]) if calibrated else p[:, j]
        return out

    def predict(self, features: FeatureBatch | Sequence[Mapping[str, Any]]) -> npt.NDArray[np.float64]:
        """Calibrated (p_click, p_cart, p_purchase) [n, 3] for a ``FeatureBatch`` (the scorer)
        or assembled feature dicts."""
        if not len(features):
            return np.zeros((0, len(TASKS)))
        if isinstance(features, FeatureBatch):
            sparse, dense = self._hasher.encode_batch(features)
        else:
            if not self._checked:
                self._check(features[0])
            sparse, dense = self._hasher.encode(features)
        return self.predict_arrays(sparse, dense)


def fuse(model: nn.Module, bf16: bool = False) -> nn.Module:
    """An MMoE in its serving form (``models.fused.FusedMMoE``: the same function in fewer,
    larger ops, in bfloat16 if ``bf16``; `python -m recsys.bench.fused` times the forms). Other
    models and MMoE shapes it does not fold are returned as they are. Not for INT8 models:
    quantizing the fused first layer, whose input mixes raw dense values with embeddings under
    one activation scale, moved served probabilities by up to 0.0203 (the unfused INT8 model
    stays under 0.02)."""
    if not isinstance(model, MMoE):
        return model
    try:
        return FusedMMoE(model, torch.bfloat16 if bf16 else torch.float32).eval()
    except ValueError:
        return model


def trace_frozen(module: nn.Module, example: tuple[torch.Tensor, ...]) -> nn.Module:
    """``module`` (in eval mode) traced on ``example`` and frozen into a TorchScript graph,
    torch.jit's deprecation notice silenced; raises what tracing raises (callers fall back to
    the eager module)."""
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cast(nn.Module, torch.jit.freeze(torch.jit.trace(module.eval(), example)))


def freeze(model: nn.Module, cfg: RankerConfig) -> nn.Module:
    """The model as a frozen TorchScript graph (traced on a small batch: every op is batch-size
    polymorphic; weights folded in as constants). It saves the per-module Python dispatch of
    eager mode: about 15% of a float MMoE's time for 500 candidates, a third for INT8. Falls
    back to the eager model if tracing fails."""
    sparse = torch.zeros((8, len(cfg.sparse)), dtype=torch.int64)
    dense = torch.zeros((8, len(cfg.dense)), dtype=torch.float32)
    try:
        return trace_frozen(model, (sparse, dense))
    except Exception as exc:  # noqa: BLE001 - an optimisation; the eager model serves the same
        warnings.warn(f"TorchScript freeze failed, serving the eager model: {exc}", stacklevel=2)
        return model


def load_ranker(path: str | Path, *, quantize_int8: bool | None = None, threads: int | None = 1,
                frozen: bool = False, bf16: bool | None = False) -> Ranker:
    """Load a ranker checkpoint (file or registry version folder) for serving.

    ``quantize_int8``: None follows the checkpoint's ``meta["quantize"]`` (set at export).
    ``threads``: torch intra-op threads for this process (None leaves it alone).
    ``frozen``: serve a frozen TorchScript graph of the model, an MMoE in its fused form
    (``fuse``, ``freeze``; the scorer does).
    ``bf16``: with ``frozen``, serve a fused MMoE in bfloat16 (None: where this CPU has native
    bf16 dot products, ``models.fused.bf16_native``). Ignored for INT8 and for models that are
    not fused; ``Ranker.bf16`` says whether it applied.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    file, reg_version = _resolve(path)
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise RankerError(f"cannot read ranker checkpoint {file}: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise RankerError(f"{file} is not a ranker checkpoint ({FORMAT})")
    cfg = RankerConfig.from_dict(blob["config"])
    if cfg.feature_version != FEATURE_VERSION:
        raise RankerError(f"{file} was trained on FEATURE_VERSION {cfg.feature_version}, "
                          f"this code assembles {FEATURE_VERSION}")
    model = build_model(cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    meta = dict(blob.get("meta") or {})
    q = bool(meta.get("quantize", False)) if quantize_int8 is None else quantize_int8
    served: nn.Module = quantize(model) if q else model
    low = False
    if frozen:
        if not q:
            served = fuse(served, bf16=bf16_native() if bf16 is None else bf16)
            low = isinstance(served, FusedMMoE) and served.dtype == torch.bfloat16
        served = freeze(served, cfg)
    cal = {h: calibrator_from_dict(d) for h, d in (blob.get("calibration") or {}).items()}
    return Ranker(served, cfg, cal, reg_version or str(blob.get("version", "unknown")), q, meta,
                  bf16=low)


def measure_latency(ranker: Ranker, features: Sequence[Mapping[str, Any]], runs: int = 200,
                    warmup: int = 20) -> dict[str, float]:
    """``predict`` latency for one batch of candidates (ms): p50, p99, mean."""
    import time

    for _ in range(warmup):
        ranker.predict(features)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        ranker.predict(features)
        ts.append((time.perf_counter() - t0) * 1000)
    a = np.array(ts)
    return {"candidates": len(features), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "runs": runs}


def serving_report(path: str | Path, sparse: npt.NDArray[np.int64], dense: npt.NDArray[np.float32],
                   labels: npt.NDArray[np.float32], features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A checkpoint through this runtime, float and INT8: calibrated AUC / ECE on held-out
    (encoded) rows and ``predict`` latency for up to 500 feature dicts, on one thread."""
    from models.offline_metrics import auc, ece

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out: dict[str, Any] = {}
        for kind, q in (("float", False), ("int8", True)):
            r = load_ranker(path, quantize_int8=q, threads=None)
            p = r.predict_arrays(sparse, dense)
            row: dict[str, Any] = {}
            for t in r.tasks:
                y, pt = labels[:, TASKS.index(t)], p[:, TASKS.index(t)]
                if 0 < y.sum() < y.size:
                    row[t] = {"auc": auc(y, pt), "ece": ece(y, pt)}
            if features:
                row["latency"] = measure_latency(r, list(features)[:500])
            out[kind] = row
        out["auc_change_int8"] = {t: out["int8"][t]["auc"] - out["float"][t]["auc"]
                                  for t in out["float"] if t != "latency"}
        if features:
            out["p50_change_int8_ms"] = out["int8"]["latency"]["p50_ms"] - out["float"]["latency"]["p50_ms"]
        return out
    finally:
        torch.set_num_threads(threads)
