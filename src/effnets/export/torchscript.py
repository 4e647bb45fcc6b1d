"""TorchScript export (``torch.jit.trace``; sizes stay dynamic thanks to tensor-op padding)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import EffnetsError
from .common import check_exportable, example_input, export_mode, input_size_of, is_compiled, rel_err, unwrap_compiled


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, input_size: int | None = None,
                       verify: bool = True, tol: float = 1e-4) -> dict:
    """Trace ``model`` and save it; verify the loaded file at the export size and a second size."""
    model = unwrap_compiled(model) if is_compiled(model) else model
    check_exportable(model, "torchscript")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = input_size_of(model, input_size)
    from .onnx import trace_size
    x = example_input(model, trace_size(model, size))  # transformers: keep resampling in the graph
    with export_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, torch.jit.ScriptModule):
            ts = model
        else:
            try:
                ts = torch.jit.trace(model, (x,), check_trace=False)
            except Exception as e:
                raise EffnetsError(f"TorchScript trace failed: {type(e).__name__}: {e}") from e
        ts.save(str(path))
    report = {"path": str(path), "input_size": size}
    if verify:
        loaded = torch.jit.load(str(path))
        patch = getattr(model, "patch", None)
        other = max(patch, size - 2 * patch) if patch else max(32, size - 31) | 1
        errs, dtypes = {}, {p.dtype for p in model.parameters()}  # (a bf16 model may return float32)
        with export_mode(model):
            for s in (size, other):
                xi = example_input(model, s, batch=2, seed=s)
                errs[f"2x{s}x{s}"] = rel_err(loaded(xi), model(xi))
        # a bf16 / fp16 model: the traced graph's plain convs and the eager model's fused oneDNN
        # ones round differently (4.6e-3 to 5.4e-3 for bf16 on an AVX512-BF16 CPU), so the bar is
        # two units of the dtype's precision there instead of tol
        tol = max([tol] + [2 * torch.finfo(d).eps for d in dtypes if d in (torch.bfloat16, torch.float16)])
        if max(errs.values()) >= tol:
            raise EffnetsError(f"TorchScript output differs from PyTorch: {errs} (tolerance {tol:g}); if the "
                               f"difference is expected, pass a larger tol or verify=False")
        report.update(sizes=errs, max_rel_err=max(errs.values()), tol=tol)
    return report
