"""Deployment: ONNX / TorchScript / ExportedProgram export with verification, prediction on
image files and Grad-CAM overlays."""
from .onnx import export_onnx, verify_onnx
from .torchscript import export_torchscript
from .exported_program import export_program

__all__ = ["export_onnx", "verify_onnx", "export_torchscript", "export_program", "export_model", "check_exportable"]


def check_exportable(model, fmt: str) -> None:
    from .common import check_exportable as _check
    _check(model, fmt)


def export_model(model, path, fmt: str = "onnx", **kwargs):
    """Dispatch on ``fmt`` (``onnx``, ``torchscript``, ``exported-program``)."""
    from ..errors import ConfigError
    fns = {"onnx": export_onnx, "torchscript": export_torchscript, "exported-program": export_program}
    if fmt not in fns:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(fns)}")
    return fns[fmt](model, path, **kwargs)
