"""Squeeze-and-excitation (Hu et al. 2018) as used by MBConv and ResNet-RS."""
from __future__ import annotations

import torch
from torch import nn

from .act import make_act
from .memory import channel_mean, gate_mul, use_memory_efficient


class SqueezeExcite(nn.Module):
    """Global average pool -> 1x1 reduce -> act -> 1x1 expand -> gate, times the input.
    Children ``conv_reduce`` and ``conv_expand`` carry biases, as in every reference."""

    def __init__(self, chs: int, rd_chs: int, act: str = "silu", gate: str = "sigmoid"):
        super().__init__()
        self.conv_reduce = nn.Conv2d(chs, rd_chs, 1, bias=True)
        self.act = make_act(act)
        self.conv_expand = nn.Conv2d(rd_chs, chs, 1, bias=True)
        self.gate = make_act(gate)
        self.memory_efficient: bool | None = None  # None: the global default (layers.memory)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-gate logits (B x C x 1 x 1)."""
        mean = channel_mean(x) if use_memory_efficient(self) else x.mean((2, 3), keepdim=True)
        return self.conv_expand(self.act(self.conv_reduce(mean)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.logits(x)
        if use_memory_efficient(self):
            out = gate_mul(x, s, self.gate)
            if out is not None:
                return out
        return x * self.gate(s)
