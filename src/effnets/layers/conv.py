"""Convolutions with explicit padding conventions, and conv-norm-act."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .act import make_act
from .memory import batch_norm_act, depthwise_conv, use_memory_efficient
from .padding import pad_same, same_is_static, symmetric_padding


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding computed from the input size (exact for odd and
    even inputs). Used only where the padding depends on the input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same(x, self.kernel_size[0], self.stride[0], self.dilation[0])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


def conv2d(in_chs: int, out_chs: int, kernel: int, stride: int = 1, *, groups: int = 1,
           bias: bool = False, padding: str = "symmetric", dilation: int = 1) -> nn.Conv2d:
    """A Conv2d whose padding follows ``padding`` ("symmetric" or "same")."""
    if padding == "same" and not same_is_static(kernel, stride, dilation):
        return Conv2dSame(in_chs, out_chs, kernel, stride, padding=0, dilation=dilation,
                          groups=groups, bias=bias)
    if padding not in ("symmetric", "same"):
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
    return nn.Conv2d(in_chs, out_chs, kernel, stride, padding=symmetric_padding(kernel, dilation), dilation=dilation,
                     groups=groups, bias=bias)


def init_conv_(m: nn.Conv2d) -> None:
    """TF EfficientNet conv init: N(0, sqrt(2 / fan_out)), fan_out = k*k*out/groups; zero bias."""
    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def batch_norm(chs: int, eps: float = 1e-5, momentum: float = 0.1) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(chs, eps=eps, momentum=momentum)


class ConvNormAct(nn.Module):
    """conv -> BatchNorm -> activation; children are named ``conv``, ``bn``, ``act``."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int = 1, stride: int = 1, *,
                 groups: int = 1, act: str | None = "relu", padding: str = "symmetric",
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1, dilation: int = 1):
        super().__init__()
        self.conv = conv2d(in_chs, out_chs, kernel, stride, groups=groups, padding=padding, dilation=dilation)
        self.bn = batch_norm(out_chs, bn_eps, bn_momentum)
        self.act = make_act(act)
        self.memory_efficient: bool | None = None  # None: the global default (layers.memory)

    @property
    def out_chs(self) -> int:
        return self.conv.out_channels

    def norm_act(self, y: torch.Tensor) -> torch.Tensor:
        """BN + act of a conv output ``y``."""
        if use_memory_efficient(self):  # training: keep the BN input only, recompute BN + act
            out = batch_norm_act(y, self.bn, self.act)
            if out is not None:
                return out
        return self.act(self.bn(y))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_memory_efficient(self):  # training: depthwise backward on the native kernels
            y = depthwise_conv(x, self.conv)
            if y is not None:
                return self.norm_act(y)
        return self.norm_act(self.conv(x))
