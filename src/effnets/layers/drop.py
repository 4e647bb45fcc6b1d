"""Stochastic depth (per-sample drop path) and its schedules."""
from __future__ import annotations

import torch
from torch import nn


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of a residual branch with probability ``p``, scaling survivors by
    1/(1-p) so the expectation is unchanged (Huang et al. 2016; "drop connect" in the TF code)."""
    if p <= 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


def linear_schedule(rate: float, num_blocks: int) -> list[float]:
    """rate * i / num_blocks for block i (0-based): the first block never drops, the last
    comes closest to ``rate`` (tensorflow/tpu efficientnet_model.py, timm, torchvision)."""
    return [rate * i / num_blocks for i in range(num_blocks)]


def stage_schedule(rate: float, blocks_per_stage: list[int]) -> list[float]:
    """ResNet-RS: every block of stage j (0-based of n) drops rate * (j + 2) / (n + 1):
    0.4, 0.6, 0.8, 1.0 x rate for four stages (tensorflow/tpu resnet_model.py)."""
    n = len(blocks_per_stage)
    out: list[float] = []
    for j, count in enumerate(blocks_per_stage):
        out += [rate * (j + 2) / (n + 1)] * count
    return out


def check_rate(name: str, p: float) -> float:
    if not 0 <= p < 1:
        raise ValueError(f"{name} must be in [0, 1), got {p}")
    return p


def set_dropout(model: nn.Module, p: float) -> None:
    """Set every nn.Dropout of ``model`` to ``p``, except attention-probability dropout
    (``attn_drop``), which is a separate knob left as built."""
    check_rate("dropout", p)
    for name, m in model.named_modules():
        if isinstance(m, nn.Dropout) and not name.endswith("attn_drop"):
            m.p = p
