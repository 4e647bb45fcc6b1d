"""``torch.export`` ExportedProgram (``.pt2``) with dynamic batch / height / width."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import EffnetsError
from .common import check_exportable, example_input, export_mode, input_size_of, is_compiled, rel_err, unwrap_compiled


def export_program(model: nn.Module, path: str | os.PathLike, *, input_size: int | None = None,
                   dynamic: bool = True, verify: bool = True, tol: float = 1e-4) -> dict:
    """``torch.export.export`` + ``torch.export.save``; reload with ``torch.export.load(path).module()``."""
    model = unwrap_compiled(model) if is_compiled(model) else model
    check_exportable(model, "exported-program")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = input_size_of(model, input_size)
    x = example_input(model, size, batch=2)
    with export_mode(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shapes = None
        if dynamic:
            shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024),
                            2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
        try:
            prog = torch.export.export(model, (x,), dynamic_shapes=shapes, strict=False)
        except Exception as e:
            raise EffnetsError(f"torch.export failed: {type(e).__name__}: {str(e).splitlines()[0]}") from e
        torch.export.save(prog, str(path))
    report = {"path": str(path), "input_size": size}
    if verify:
        loaded = torch.export.load(str(path)).module()
        errs = {}
        with export_mode(model):
            for b in (1, 3) if dynamic else (2,):
                xi = example_input(model, size, batch=b, seed=b)
                errs[f"{b}x{size}x{size}"] = rel_err(loaded(xi), model(xi))
        if max(errs.values()) >= tol:
            raise EffnetsError(f"ExportedProgram output differs from PyTorch: {errs}")
        report.update(sizes=errs, max_rel_err=max(errs.values()))
    return report
