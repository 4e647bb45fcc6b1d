"""Shared export helpers: example inputs, exportability checks, error measures."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.attention import fused_attention


def input_size_of(model: nn.Module, size: int | None = None) -> int:
    """The square side an example input gets: ``size``, else the model's own image size."""
    if size:
        return int(size)
    img = getattr(model, "img_size", None)
    if img:
        return int(img[0])
    card = getattr(model, "card", None)
    if card is not None:
        return int(card.test_size)
    spec = getattr(model, "spec", None)
    return int(getattr(spec, "resolution", 224) or 224)


def example_input(model: nn.Module, size: int | None = None, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    in_chans = getattr(model, "in_chans", 3)
    s = input_size_of(model, size)
    return torch.randn(batch, in_chans, s, s, generator=g)


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (b the reference)."""
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def is_quantized(model: nn.Module) -> bool:
    for m in model.modules():
        mod = type(m).__module__
        if mod.startswith(("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized")):
            return True
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_quantized:
            return True
    return any(getattr(p, "is_quantized", False) for p in model.state_dict().values()
               if isinstance(p, torch.Tensor))


def is_compiled(model) -> bool:
    return type(model).__name__ == "OptimizedModule" or hasattr(model, "_orig_mod")


def unwrap_compiled(model):
    """``torch.compile`` wraps the module; the exporters need the original (same weights)."""
    return getattr(model, "_orig_mod", model)


def check_exportable(model, fmt: str) -> None:
    """Raise ConfigError with the reason when ``model`` cannot go to ``fmt``."""
    if isinstance(model, torch.jit.ScriptModule):
        if fmt != "torchscript":
            raise ConfigError(f"a TorchScript module can only be saved as torchscript, not {fmt}; "
                              "export the original nn.Module instead")
        return
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected an nn.Module, got {type(model).__name__}")
    low = sorted({str(t.dtype).replace("torch.", "") for t in model.parameters()
                  if t.is_floating_point() and t.dtype != torch.float32})
    if low and fmt == "onnx":
        raise ConfigError(
            f"the model's weights are {', '.join(low)}: onnxruntime has no CPU kernels for them (e.g. bfloat16 "
            "Conv), so the ONNX file could not be verified; export the float32 model and convert the ONNX file "
            "(onnxconverter_common float16 / onnxruntime.quantization), or use --format torchscript")
    if is_quantized(model) and fmt == "onnx":
        raise ConfigError(
            "quantized models (torch.ao int8 modules / quantized tensors, e.g. effnets.optimize dtype=\"int8\") cannot be exported "
            "to ONNX by torch.onnx; export the float model and quantize the ONNX file with onnxruntime "
            "(onnxruntime.quantization.quantize_dynamic / quantize_static), or use --format torchscript")


@contextlib.contextmanager
def export_mode(model: nn.Module) -> Iterator[nn.Module]:
    """eval mode, the plain (non-SDPA) attention path and optimized models on their plain ATen ops
    (what a traced graph holds; ``effnets.plain_ops.aten_ops``), restored afterwards."""
    from ..plain_ops import aten_ops
    was_training = model.training
    model.eval()
    try:
        with fused_attention(False), aten_ops(), torch.no_grad():
            yield model
    finally:
        model.train(was_training)
