"""Where effnets' native kernels may run: eagerly, outside the exporters' reference run.

A trace, script or compile must see standard ATen ops (a traced graph would keep a kernel's output
allocation and lose the ctypes call that fills it), and the exporters' reference run must compute
what the traced graph holds: in an int8 model a kernel's last-ulp difference can move a value
across a rounding boundary (int8_dynamic B0: 0.3% of the logits apart; the int8 glue's gate
product: a quantization step).  One predicate serves ``effnets.optimize`` and ``effnets.int8_glue``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_REFERENCE_RUN = [False]  # set by aten_ops()


@contextlib.contextmanager
def aten_ops() -> Iterator[None]:
    """Within this block every optimized module runs its plain PyTorch ops (the exporters'
    reference run, ``effnets.export.common.export_mode``)."""
    old, _REFERENCE_RUN[0] = _REFERENCE_RUN[0], True
    try:
        yield
    finally:
        _REFERENCE_RUN[0] = old


def plain_mode() -> bool:
    """True where only standard ATen ops may run: compile, export, scripting, tracing, and inside
    :func:`aten_ops`."""
    return (_REFERENCE_RUN[0] or torch.jit.is_scripting() or torch.jit.is_tracing()
            or torch.compiler.is_compiling())


__all__ = ["aten_ops", "plain_mode"]
