"""ONNX export with a dynamic batch axis and dynamic height/width, verified with onnxruntime.

Two torch exporters exist: the TorchScript-tracing one (``dynamo=False``; fast, mature) and
the ``torch.export``-based one (``dynamo=True``; the default of ``torch.onnx.export`` since
torch 2.9, needs ``onnxscript``, much slower on CPU).  We default to the tracing exporter: every
input-size dependent computation in effnets (TF SAME padding, ViT position-embedding and
CoAtNet relative-bias resampling) is written with tensor ops on the input shape, so the traced
graph stays valid at every size (``layers/padding.py::same_pad_amount``).

Verification runs the file in onnxruntime at several input sizes and batch sizes and compares
with the PyTorch model: relative error max|ort - torch| / max|torch| must stay below ``tol``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError, EffnetsError
from .common import check_exportable, example_input, export_mode, input_size_of, is_compiled, rel_err, unwrap_compiled

DEFAULT_OPSET = 18


class ExportError(EffnetsError):
    """An export that failed or did not reproduce the PyTorch outputs."""


def export_onnx(model: nn.Module, path: str | os.PathLike, *, input_size: int | None = None,
                dynamic: bool = True, opset: int = DEFAULT_OPSET, dynamo: bool = False,
                verify: bool = True, verify_sizes: Sequence[int] | None = None, tol: float = 1e-4) -> dict:
    """Write ``model`` to ``path`` as ONNX (input ``input`` NCHW, output ``logits``).

    ``dynamic``: batch, height and width are symbolic axes.  Returns a report dict with the
    verification errors (``{"sizes": {..: rel_err}, "max_rel_err": ..}``); raises ExportError when
    a verified size exceeds ``tol``."""
    model = unwrap_compiled(model) if is_compiled(model) else model
    check_exportable(model, "onnx")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = input_size_of(model, input_size)
    x = example_input(model, trace_size(model, size) if dynamic and not dynamo else size, batch=1)
    with export_mode(model), warnings.catch_warnings(), _aa_bicubic_symbolic(opset):
        warnings.simplefilter("ignore")  # tracer / deprecation chatter
        try:
            if dynamo:
                b, h, w = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
                shapes = {"x": {0: b, 2: h, 3: w}} if dynamic else None
                prog = torch.onnx.export(model, (x,), None, input_names=["input"], output_names=["logits"],
                                         opset_version=opset, dynamo=True, dynamic_shapes=shapes)
                prog.save(str(path))
            else:
                axes = {"input": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch"}} if dynamic else None
                torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"],
                                  opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
        except ConfigError:
            raise
        except Exception as e:
            raise ExportError(f"ONNX export of {getattr(model, 'name', type(model).__name__)} failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    report = {"path": str(path), "input_size": size, "dynamic": dynamic, "opset": opset,
              "exporter": "dynamo" if dynamo else "torchscript-trace"}
    if verify:
        sizes = list(verify_sizes) if verify_sizes else default_verify_sizes(model, size, dynamic)
        report.update(verify_onnx(model, path, sizes=sizes, batches=(1, 2) if dynamic else (1,), tol=tol))
    return report


def trace_size(model: nn.Module, size: int) -> int:
    """Size to trace at.  Transformers resample their position tables only when the input is not
    their native size (a Python branch the tracer freezes), so they are traced at another size:
    the graph then always resamples, which is exact (to 1e-6) at the native size too."""
    native = getattr(model, "img_size", None)
    if native is None or size != int(native[0]):
        return size
    return size + (getattr(model, "patch", None) or 32)


def _aa_bicubic(g, x, output_size, align_corners, scales_h=None, scales_w=None):
    """ONNX symbolic for ``aten::_upsample_bicubic2d_aa`` (ViT position-embedding resampling),
    missing from torch's TorchScript exporter: ONNX Resize (opset >= 18) with ``antialias=1``,
    cubic a = -0.5 and ``exclude_outside=1``, which is PyTorch's / PIL's antialiased bicubic
    (weights normalised over in-image taps); matches to ~1e-6 in tests/test_export.py."""
    shape = g.op("Shape", x)
    nc = g.op("Slice", shape, g.op("Constant", value_t=torch.tensor([0])), g.op("Constant", value_t=torch.tensor([2])))
    sizes = g.op("Concat", nc, g.op("Cast", output_size, to_i=7), axis_i=0)
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    return g.op("Resize", x, empty, empty, sizes, mode_s="cubic", cubic_coeff_a_f=-0.5, antialias_i=1,
                coordinate_transformation_mode_s="half_pixel", exclude_outside_i=1)


@contextlib.contextmanager
def _aa_bicubic_symbolic(opset: int):
    name = "aten::_upsample_bicubic2d_aa"
    if opset < 18:
        yield
        return
    torch.onnx.register_custom_op_symbolic(name, _aa_bicubic, opset)
    try:
        yield
    finally:
        torch.onnx.unregister_custom_op_symbolic(name, opset)


def default_verify_sizes(model: nn.Module, size: int, dynamic: bool) -> list[int]:
    """The export size, plus (when dynamic) a smaller and an odd size the model accepts."""
    if not dynamic:
        return [size]
    patch = getattr(model, "patch", None)
    if patch:  # ViT: multiples of the patch
        return [size, max(patch, size - 2 * patch)]
    return [size, max(32, size - 31) | 1]


_FLOAT32_SLACK = 8  # onnxruntime's distance to float64, in multiples of PyTorch float32's


def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: Sequence[int] = (224,),
                batches: Sequence[int] = (1, 2), tol: float = 1e-4) -> dict:
    """Run the ONNX file in onnxruntime against ``model`` at ``sizes`` x ``batches``."""
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency of the export extra
        raise ExportError("onnxruntime is not installed: pip install onnxruntime (needed to verify)") from None
    model = unwrap_compiled(model)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    errs: dict[str, float] = {}
    cases: dict[str, tuple] = {}
    with export_mode(model):
        for s in sizes:
            for b in batches:
                x = example_input(model, s, batch=b, seed=s * 7 + b)
                ref = model(x)
                out = sess.run(None, {name: x.numpy()})[0]
                if tuple(out.shape) != tuple(ref.shape):
                    raise ExportError(f"onnxruntime output shape {tuple(out.shape)} != PyTorch {tuple(ref.shape)} "
                                      f"at input {tuple(x.shape)}")
                errs[f"{b}x{s}x{s}"] = rel_err(out, ref)
                cases[f"{b}x{s}x{s}"] = (x, ref, out)
    worst = max(errs.values())
    report = {"sizes": errs, "max_rel_err": worst, "tol": tol}
    if worst >= tol:
        # Deep nets with untrained weights, or trained nets fed the random verification images
        # (far outside their training distribution), can be ill-conditioned enough that float32
        # itself is not exact to 1e-4.  Then judge both runtimes against a float64 PyTorch run:
        # accept onnxruntime when it is as close to float64 as PyTorch's own float32 result is,
        # within a factor 8 (different kernels and summation orders; measured on B0 trained on
        # digits: 2.05x on the AVX2 development machine, 4.3x on the AVX-512 one).
        key = max(errs, key=errs.get)
        floor, ort64 = _float64_floor(model, *cases[key])
        report.update(float64_floor=floor, ort_vs_float64=ort64)
        if ort64 >= max(tol, _FLOAT32_SLACK * floor):
            raise ExportError(f"ONNX output differs from PyTorch: max relative error {worst:.3g} >= {tol:g} "
                              f"({errs}); against float64 PyTorch: onnxruntime {ort64:.3g}, PyTorch float32 "
                              f"{floor:.3g} (accepted up to {_FLOAT32_SLACK}x that). If the graph is known to be "
                              f"right, export with verify=False or a larger tol")
    return report


def _float64_floor(model: nn.Module, x: torch.Tensor, ref: torch.Tensor, out) -> tuple[float, float]:
    """(rel. error of PyTorch float32 vs float64, rel. error of onnxruntime vs float64)."""
    import copy
    m64 = copy.deepcopy(model).double()
    with export_mode(m64):
        ref64 = m64(x.double())
    return rel_err(ref.double(), ref64), rel_err(torch.as_tensor(out).double(), ref64)
