"""Padding: symmetric ((k-1)//2 per side) or TensorFlow SAME.

TF SAME pads ``max((ceil(i/s) - 1) * s + (k - 1) * d + 1 - i, 0)`` in total, with the extra
pixel on the bottom/right.  When that total does not depend on the input size (stride 1) the
padding is static and symmetric-equivalent for odd kernels; only strided (or even) kernels pad
per input size, and only those pay for it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def symmetric_padding(kernel: int, dilation: int = 1) -> int:
    """(k-1)//2 per side (torchvision/timm default for odd kernels)."""
    return dilation * (kernel - 1) // 2


def same_is_static(kernel: int, stride: int, dilation: int = 1) -> bool:
    """True when SAME padding is the same for every input size and symmetric."""
    return stride == 1 and (dilation * (kernel - 1)) % 2 == 0


def same_pad_amount(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def pad_same(x: torch.Tensor, kernel: int, stride: int, dilation: int = 1, value: float = 0.0) -> torch.Tensor:
    """Pad an NCHW tensor the way TF SAME would before a kxk conv or pool."""
    ih, iw = x.shape[-2:]
    ph = same_pad_amount(ih, kernel, stride, dilation)
    pw = same_pad_amount(iw, kernel, stride, dilation)
    if ph > 0 or pw > 0:
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2], value=value)
    return x
