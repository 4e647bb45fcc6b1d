"""ResNet bottleneck with ResNet-D shortcut and SE on the output (ResNet-RS)."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvNormAct, DropPath, make_act
from .common import BlockArgs
from .mbconv import ResidualBlock, add_residual, inplace_ok


class Shortcut(nn.Module):
    """Projection shortcut. ResNet-D (``avg_down``): 2x2 average pool (stride) then 1x1 conv,
    so no input pixel is skipped; otherwise a strided 1x1 conv. Children: ``pool``, ``conv``."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        stride = a.stride
        if a.conv.avg_down and stride > 1:
            self.pool = nn.AvgPool2d(2, stride, ceil_mode=True, count_include_pad=False)
            stride = 1
        else:
            self.pool = nn.Identity()
        self.conv = ConvNormAct(a.in_chs, a.out_chs, 1, stride, **a.norm_act(None))

    def forward(self, x):
        return self.conv(self.pool(x))


class Bottleneck(ResidualBlock):
    """1x1 reduce -> kxk (strided) -> 1x1 expand -> SE -> + shortcut -> act.
    ``row.expand`` is the bottleneck width as a fraction of the output (0.25 in ResNet)."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        mid = max(1, int(a.out_chs * a.row.expand))
        self.has_skip = True  # a ResNet block always adds a shortcut
        self.conv1 = ConvNormAct(a.in_chs, mid, 1, **a.norm_act())
        self.conv2 = ConvNormAct(mid, mid, a.row.kernel, a.stride, **a.norm_act())
        self.conv3 = ConvNormAct(mid, a.out_chs, 1, **a.norm_act(None))
        self.se = a.make_se(a.out_chs)
        needs_proj = a.stride != 1 or a.in_chs != a.out_chs
        self.shortcut = Shortcut(a) if needs_proj else None
        self.drop_path = DropPath(a.drop_path)
        self.act = make_act(a.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv3(self.conv2(self.conv1(x)))
        sc = x if self.shortcut is None else self.shortcut(x)
        # effnets.optimize's squeeze-excite can gate, add the shortcut and activate in one pass
        tail = getattr(self.se, "gate_residual_", None)
        if tail is not None and not self.training:
            out = tail(y, sc, self.act)
            if out is not None:
                return out
        if self.se is not None:
            y = self.se(y)
        y = add_residual(self.drop_path(y), sc)
        if type(self.act) is nn.ReLU and inplace_ok(y):
            return y.relu_()  # inference: y is this block's own buffer
        return self.act(y)
