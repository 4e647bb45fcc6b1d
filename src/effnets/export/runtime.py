"""Run a model in ONNX Runtime behind an ``nn.Module`` (``effnets.optimize(m, backend="onnxruntime")``).

Why: on CPU, ONNX Runtime's own kernels (blocked NCHWc layout, conv + activation fusion) run
the EfficientNet family faster than any PyTorch eager module (``make bench`` measures it), and
the export takes seconds, not the minute of a ``torch.compile``.  The model is exported with
:func:`effnets.export.export_onnx` (verified against PyTorch, rel. error < 1e-4) and held in
memory; calls take and return torch tensors.  Inference only: no gradients, no parameters.
"""
from __future__ import annotations

import os
import tempfile
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, InputError


class OnnxRuntimeModel(nn.Module):
    """A CPU ONNX Runtime session for an exported effnets model, called like the model."""

    def __init__(self, onnx_bytes: bytes, threads: int | None = None, *, name: str = "", card=None):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError("backend='onnxruntime' needs onnxruntime: pip install onnxruntime") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.name, self.card = name, card

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise InputError(f"expected an image batch tensor (N, C, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dtype != torch.float32:
            raise InputError(f"the ONNX Runtime model takes float32 input, got {x.dtype}: call x.float() first")
        out = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    def extra_repr(self) -> str:
        return f"onnxruntime, {self.session.get_session_options().intra_op_num_threads} threads"


def to_onnxruntime(model: nn.Module, *, threads: int | None = None, input_size: int | None = None,
                   verify: bool = True, int8_calibration=None, keep_fp32: Sequence[str] | None = None
                   ) -> OnnxRuntimeModel:
    """Export ``model`` (eval mode, dynamic batch and size) and load it into ONNX Runtime.

    ``int8_calibration`` (a list of NCHW float batches): post-training static int8
    quantization of the exported graph by ``onnxruntime.quantization`` (QDQ format, per-channel
    symmetric int8 weights, uint8 activations with min/max ranges from those batches); the
    ONNX nodes named in ``keep_fp32`` stay float, by default the first convolution (the one
    reading the image: the layer most sensitive to quantization, see
    ``effnets.optimize.quantize_int8``)."""
    from .onnx import export_onnx
    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ConfigError("backend='onnxruntime' needs onnxruntime: pip install onnxruntime") from e
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.onnx")
        export_onnx(model.eval(), path, input_size=input_size, verify=verify)
        if int8_calibration is not None:
            path = _quantize_onnx(path, d, int8_calibration, keep_fp32)
        with open(path, "rb") as f:
            data = f.read()
    return OnnxRuntimeModel(data, threads, name=getattr(model, "name", type(model).__name__),
                            card=getattr(model, "card", None))


def _quantize_onnx(path: str, workdir: str, batches, keep_fp32: Sequence[str] | None) -> str:
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    graph = onnx.load(path).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    if keep_fp32 is None:
        keep = convs[:1]
    else:
        names = {n.name for n in graph.node}
        unknown = [k for k in keep_fp32 if k not in names]
        if unknown:
            raise ConfigError(f"keep_fp32: no ONNX node named {unknown[0]!r}; the convolutions are "
                              f"{', '.join(convs[:4])}, ...")
        keep = list(keep_fp32)
    input_name = graph.input[0].name
    feeds = [{input_name: b.detach().float().cpu().contiguous().numpy()} for b in batches]
    if not feeds:
        raise ConfigError("int8 calibration data is empty")

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out = os.path.join(workdir, "model_int8.onnx")
    quantize_static(path, out, _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=keep)
    return out


__all__ = ["OnnxRuntimeModel", "to_onnxruntime"]
