"""Padding: symmetric ((k-1)//2 per side) or TensorFlow SAME.

TF SAME pads ``max((ceil(i/s) - 1) * s + (k - 1) * d + 1 - i, 0)`` in total, with the extra
pixel on the bottom/right.  When that total does not depend on the input size (stride 1) the
padding is static and symmetric-equivalent for odd kernels; only strided (or even) kernels pad
per input size, and only those pay for it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_padding(kernel: int, dilation: int = 1) -> int:
    """(k-1)//2 per side (torchvision/timm default for odd kernels)."""
    return dilation * (kernel - 1) // 2


def same_is_static(kernel: int, stride: int, dilation: int = 1) -> bool:
    """True when SAME padding is the same for every input size and symmetric."""
    return stride == 1 and (dilation * (kernel - 1)) % 2 == 0


def same_pad_amount(size, kernel: int, stride: int, dilation: int = 1):
    """Total SAME padding along one axis: ``max((ceil(n/s) - 1) * s + k_eff - n, 0)``.

    Written as ``k_eff - 1 - (n - 1) % s`` (equal: with n - 1 = q s + r, ceil(n/s) = q + 1), which
    is never negative when k_eff >= s, so no ``max``/``ceil`` is needed: ``size`` may be an int, a
    SymInt (torch.export), an FX proxy or, while tracing for ONNX / TorchScript, a 0-dim tensor,
    and an exported graph computes the padding from the actual input size instead of baking in
    the size it was traced at."""
    k_eff = (kernel - 1) * dilation + 1
    total = k_eff - 1 - (size - 1) % stride
    if k_eff >= stride:
        return total
    if isinstance(total, torch.Tensor):
        return total.clamp(min=0)
    return max(total, 0)


def pad_same(x: torch.Tensor, kernel: int, stride: int, dilation: int = 1, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor the way TF SAME would before a kxk conv or pool (exportable with a
    dynamic height/width: see ``same_pad_amount``)."""
    ih, iw = x.shape[-2:]
    ph = same_pad_amount(ih, kernel, stride, dilation)
    pw = same_pad_amount(iw, kernel, stride, dilation)
    if type(ph) is int and type(pw) is int and not torch.jit.is_tracing():
        if ph == 0 and pw == 0:
            return x
    # symbolic sizes (tracing, export, FX): always pad, a zero pad is a no-op
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)
