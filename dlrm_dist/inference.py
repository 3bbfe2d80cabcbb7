"""Inference on a trained model: an unsharded copy, optionally quantized, evaluated on the
test data, and exported (torch.export; ONNX where the ops allow).

Shapes: B batch, F sparse features, D embedding dim.

- The copy is our `DLRM` on CPU with the full weights (gathered from the shards on rank 0
  and broadcast), so each rank evaluates its slice of the test data exactly as `evaluate`
  does during training and the metrics are gathered the same way.
- `--quantize-mlp-with-bit 8`: torch.ao dynamic quantization of the bottom and top MLPs'
  Linear layers to int8 (weights int8 per tensor, activations quantized per batch);
  `16`: the same with fp16 weights (fbgemm's fp16 GEMM, fp32 activations), as the
  reference does. `--quantize-emb-with-bit 8|4`: torchrec's quantized
  EmbeddingBagCollection (`from_float`): each row stored as uint8 / uint4 with a
  per-row fp16 scale and bias (fbgemm's TBE inference kernel, which runs on CPU).
- Export: `torch.export` (non-strict) of `DLRM.forward(dense (B, m_den), KJT)`; torchrec
  registers the KJT as a pytree, so the sparse side exports as is. The batch size B and
  the number of ids N are symbolic (B >= 1, N >= 0; the KJT's lengths are F B), so one
  program serves any batch: call it with `KeyedJaggedTensor(keys, values, lengths)`, the
  form it was traced with (a KJT that also holds offsets is another pytree). Sizes are
  traced size-oblivious, or export would specialise B = 1 away (torch's 0/1 rule).
  torch.ao's dynamic-quantized Linear does not export (its packed weights are a
  TorchScript class), so export takes the float or embedding-quantized model.

Written here because torchrec has no trainer-side inference entry point: its
`torchrec.inference` packages models for a C++ predictor server.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from dlrm_dist.arch import Arch
from dlrm_dist.config import Config, InferenceConfig, ModelConfig
from dlrm_dist.embeddings import SequencePoolingArch
from dlrm_dist.errors import ConfigError
from dlrm_dist.model import DLRM, make_loss

log = logging.getLogger("dlrm_dist")

NO_QUANT = 32  # the reference's default bit width: not quantized


class Scored(nn.Module):
    """A DLRM called the way `evaluate` calls the trainer's model: Batch -> (loss, (loss,
    (B,) predictions))."""

    def __init__(self, model: DLRM, cfg: ModelConfig) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = make_loss(cfg)

    def forward(self, batch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        p = self.model(batch.dense_features, batch.sparse_features)
        loss = self.loss_fn(p, batch.labels)
        return loss, (loss.detach(), p.detach())


def inference_model(arch: Arch, cfg: ModelConfig, weights: dict[str, np.ndarray]) -> DLRM:
    """An unsharded float DLRM on CPU holding `weights` (parameter name -> full array)."""
    model = DLRM(arch, cfg, device="cpu")
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ConfigError(f"no weights for {', '.join(missing[:3])} in the gathered model")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.from_numpy(np.asarray(weights[name])))
    return model.eval()


def quantize(model: DLRM, mlp_bit: int = NO_QUANT, emb_bit: int = NO_QUANT) -> DLRM:
    """A quantized copy of model (see the module docstring); model stays as it is."""
    from torch.ao.quantization import PlaceholderObserver, QConfig, quantize_dynamic

    model = copy.deepcopy(model)
    if mlp_bit != NO_QUANT:
        dtype = torch.qint8 if mlp_bit == 8 else torch.float16
        model.bot_l = quantize_dynamic(model.bot_l, {nn.Linear}, dtype)
        model.top_l = quantize_dynamic(model.top_l, {nn.Linear}, dtype)
    if emb_bit != NO_QUANT:
        from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEBC

        if isinstance(model.sparse_arch, SequencePoolingArch):
            raise ConfigError(
                "--quantize-emb-with-bit quantizes pooled tables; learned weighted pooling "
                "looks rows up unpooled: drop one of them"
            )

        ebc = model.sparse_arch.embedding_bag_collection
        ebc.qconfig = QConfig(
            activation=PlaceholderObserver.with_args(dtype=torch.float),
            weight=PlaceholderObserver.with_args(
                dtype=torch.quint8 if emb_bit == 8 else torch.quint4x2
            ),
        )
        model.sparse_arch.embedding_bag_collection = QuantEBC.from_float(ebc)
    return model.eval()


def describe(inf: InferenceConfig) -> str:
    """'float', or e.g. 'mlp int8, emb int4'."""
    parts = []
    if inf.quantize_mlp_with_bit != NO_QUANT:
        parts.append(f"mlp {'int8' if inf.quantize_mlp_with_bit == 8 else 'fp16'}")
    if inf.quantize_emb_with_bit != NO_QUANT:
        parts.append(f"emb int{inf.quantize_emb_with_bit}")
    return ", ".join(parts) or "float"


class _Predict(nn.Module):
    """DLRM.forward alone (a DLRMTrain's forward takes a Batch and computes the loss)."""

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, sparse: Any) -> torch.Tensor:
        return DLRM.forward(self.model, dense, sparse)


def export_inputs(batch) -> tuple[tuple[torch.Tensor, Any], tuple[Any, ...]]:
    """(dense, KJT of values and lengths (and weights, if any)) from a Batch, and their
    dynamic shapes: B and N free (see the module docstring)."""
    from torch.export import Dim
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    kjt = batch.sparse_features
    sparse = KeyedJaggedTensor(
        keys=kjt.keys(), values=kjt.values(), lengths=kjt.lengths(), weights=kjt.weights_or_none()
    )
    b = Dim("batch", min=1, max=1 << 24)
    n = Dim("ids", min=0, max=1 << 40)
    per_field = {"_values": {0: n}, "_weights": {0: n}, "_lengths": {0: len(kjt.keys()) * b}}
    leaves = [per_field.get(f) if getattr(sparse, f) is not None else None for f in sparse._fields]
    return (batch.dense_features, sparse), ({0: b}, leaves)


def _traced(fn, *args, **kwargs):
    """fn (torch.export.export or torch.onnx.export) with sizes traced size-oblivious."""
    import torch.fx.experimental._config as fx_config

    with fx_config.patch(backed_size_oblivious=True):
        return fn(*args, **kwargs)


def export(model: DLRM, batch) -> torch.export.ExportedProgram:
    """torch.export of model's prediction (dense (B, m_den), KJT) -> (B,), traced on
    batch, for any B and number of ids. Raises ConfigError (one line) when the model's
    ops cannot be exported."""
    inputs, shapes = export_inputs(batch)
    try:
        return _traced(
            torch.export.export, _Predict(model), inputs, dynamic_shapes=shapes, strict=False
        )
    except Exception as exc:
        why = " ".join(str(exc).split())[:200]
        hint = (
            "torch.export cannot trace torch.ao's dynamic-quantized Linear: export without "
            "--quantize-mlp-with-bit"
            if any(_is_dynamic_quantized(m) for m in model.modules())
            else "the model's ops do not export"
        )
        raise ConfigError(f"{hint} ({type(exc).__name__}: {why})") from None


def _is_dynamic_quantized(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def save_export(program: torch.export.ExportedProgram, path: str) -> None:
    try:
        torch.export.save(program, path)
    except Exception as exc:
        why = " ".join(str(exc).split())[:200]
        raise ConfigError(f"--export {path}: not saved ({type(exc).__name__}: {why})") from None


def load_export(path: str) -> torch.export.ExportedProgram:
    """A program save_export wrote. Its example inputs hold a KJT, which torch.load's
    weights-only unpickler admits only when allowed by name."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    with torch.serialization.safe_globals([KeyedJaggedTensor]):
        return torch.export.load(path)


def save_onnx(model: DLRM, batch, path: str) -> None:
    """ONNX through torch.onnx's exporter (which needs the onnx and onnxscript packages),
    traced on batch, for any B and N: inputs `dense` (B, m_den) float, `sparse__values`
    (N,) and `sparse__lengths` (F B,) int64 (the KJT's ids and bag sizes, key-major),
    output the (B,) predictions. Raises ConfigError (one line) where the packages are missing or an
    op has no ONNX form (FBGEMM's quantized embedding lookup, dynamic-quantized Linear)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"--save-onnx {path}: torch.onnx needs the onnx and onnxscript packages, which "
            "are not installed: pip install onnx onnxscript, or use --export for torch.export"
        ) from None
    inputs, shapes = export_inputs(batch)
    try:
        _traced(
            torch.onnx.export, _Predict(model), inputs, path, dynamo=True, dynamic_shapes=shapes
        )
    except Exception as exc:
        why = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))[:160]
        raise ConfigError(
            f"--save-onnx {path}: these ops have no ONNX form ({type(exc).__name__}: {why}); "
            "use --export for torch.export"
        ) from None


def run(cfg: Config, env, sharded, arch: Arch, names: list[str], test_data, ntest: int):
    """--inference-only: evaluate the (resumed) model on the test data, float and, when
    asked, quantized; export when asked (rank 0). Nothing is trained or saved.
    Returns the RunResult-like metrics list: [float metrics, quantized metrics]."""
    from dlrm_dist import distributed
    from dlrm_dist.evaluation import evaluate

    if env.world_size > 1 and env.device.type == "cuda":
        raise ConfigError(
            "--inference-only evaluates an unsharded copy on CPU: run it on one process, "
            "or with --dist-backend gloo"
        )
    inf = cfg.inference
    weights = distributed.from_rank0(distributed.gather_full_weights(sharded, names))
    model = inference_model(arch, cfg.model, weights)
    cpu = torch.device("cpu")
    evals = [evaluate(Scored(model, cfg.model), test_data, cpu, ntest)]
    log.info("inference: float: %s", _line(evals[0]))
    kind = describe(inf)
    if kind != "float":
        model = quantize(model, inf.quantize_mlp_with_bit, inf.quantize_emb_with_bit)
        evals.append(evaluate(Scored(model, cfg.model), test_data, cpu, ntest))
        change = ", ".join(
            f"{k} {evals[1][k] - evals[0][k]:+.6f}" for k in evals[1] if k in evals[0]
        )
        log.info("inference: %s: %s (change: %s)", kind, _line(evals[1]), change)
    if env.rank == 0 and (inf.export or inf.save_onnx):
        batch = next(iter(test_data))
        if inf.export:
            save_export(export(model, batch), inf.export)
            log.info("inference: torch.export program (%s) saved to %s", kind, inf.export)
        if inf.save_onnx:
            save_onnx(model, batch, inf.save_onnx)
            log.info("inference: ONNX model (%s) saved to %s", kind, inf.save_onnx)
    return evals


def _line(m: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.6f}" for k, v in m.items())
