"""Mobile blocks: conv, depthwise-separable, MBConv (inverted residual) and Fused-MBConv."""
from __future__ import annotations

import torch
from torch import nn

from ..layers import ConvNormAct
from ..layers.memory import conv_project, expand_conv_dw, se_conv
from .common import BlockArgs


def inplace_ok(*ts: torch.Tensor) -> bool:
    """True in plain inference (no autograd on ``ts``, not tracing/scripting/compiling), where a
    block may overwrite its own fresh intermediate buffers."""
    if (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()
            or any(isinstance(t, torch.fx.Proxy) for t in ts)):
        return False  # graphs (export, compile, FX quantization) keep the plain out-of-place ops
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in ts))


def add_residual(y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``y + shortcut``; in plain inference in place on ``y`` (the block's own fresh output),
    which saves a buffer and a memory pass."""
    return y.add_(shortcut) if inplace_ok(y, shortcut) else y + shortcut


class ResidualBlock(nn.Module):
    """Base: ``forward`` = shortcut + drop_path(branch) when the block has a skip.
    Subclasses set ``has_skip`` and ``drop_path`` (a DropPath when there is a skip, else None);
    no class-level defaults for those two, since a class attribute would hide the registered
    submodule.  A subclass whose ``branch`` takes a shortcut may be marked ``residual_in_branch``."""

    # set per block by effnets.optimize where the branch's last 1x1 conv can add the shortcut in
    # its GEMM's epilogue (``branch(x, shortcut)``): one pass over the block output, not two
    residual_in_branch = False

    def branch(self, x: torch.Tensor, shortcut: torch.Tensor | None = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual_in_branch and not self.training:  # eval: drop path is the identity
            return self.branch(x, x)
        y = self.branch(x)
        if self.has_skip:
            y = add_residual(self.drop_path(y), x)
        return y

    def set_drop_path(self, p: float) -> None:
        if self.drop_path is not None:
            self.drop_path.p = p


class ConvBlock(ResidualBlock):
    """A single conv-norm-act (MobileNetV3's final 1x1 conv); skip when shapes allow."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        self.has_skip = a.has_skip and a.row.kernel > 1
        self.conv = ConvNormAct(a.in_chs, a.out_chs, a.row.kernel, a.stride, **a.norm_act())
        self.drop_path = a.make_drop_path() if self.has_skip else None

    def branch(self, x):
        return self.conv(x)


class DepthwiseSeparable(ResidualBlock):
    """dw kxk -> (SE) -> pw 1x1 (linear unless ``pw_act``): MobileNetV1 and MBConv1."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        self.has_skip = a.has_skip
        self.conv_dw = ConvNormAct(a.in_chs, a.in_chs, a.row.kernel, a.stride, groups=a.in_chs, **a.norm_act())
        self.se = a.make_se(a.in_chs)
        self.conv_pw = ConvNormAct(a.in_chs, a.out_chs, 1, **a.norm_act("block" if a.row.pw_act else None))
        self.drop_path = a.make_drop_path()

    def branch(self, x):
        return se_conv(self.conv_dw(x), self.se, self.conv_pw)


class MBConv(ResidualBlock):
    """Inverted residual (MobileNetV2): pw expand -> dw kxk -> (SE) -> linear pw project.
    With expansion 1 there is no expand conv (the block is depthwise-separable)."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        mid = a.mid_chs
        self.has_skip = a.has_skip
        self.conv_pw = ConvNormAct(a.in_chs, mid, 1, **a.norm_act()) if mid != a.in_chs else None
        self.conv_dw = ConvNormAct(mid, mid, a.row.kernel, a.stride, groups=mid, **a.norm_act())
        self.se = a.make_se(mid)
        self.conv_pwl = ConvNormAct(mid, a.out_chs, 1, **a.norm_act(None))
        self.drop_path = a.make_drop_path()

    def branch(self, x, shortcut=None):
        return se_conv(expand_conv_dw(x, self.conv_pw, self.conv_dw), self.se, self.conv_pwl, shortcut)


class FusedMBConv(ResidualBlock):
    """Fused-MBConv (EfficientNetV2): kxk expand conv -> (SE) -> linear 1x1 project.
    With expansion 1 it is a single kxk conv-norm-act (with skip when shapes allow)."""

    def __init__(self, a: BlockArgs):
        super().__init__()
        self.has_skip = a.has_skip
        if a.row.expand == 1:
            self.conv_exp = ConvNormAct(a.in_chs, a.out_chs, a.row.kernel, a.stride, **a.norm_act())
            self.se = a.make_se(a.out_chs)
            self.conv_pwl = None
        else:
            mid = a.mid_chs
            self.conv_exp = ConvNormAct(a.in_chs, mid, a.row.kernel, a.stride, **a.norm_act())
            self.se = a.make_se(mid)
            self.conv_pwl = ConvNormAct(mid, a.out_chs, 1, **a.norm_act(None))
        self.drop_path = a.make_drop_path()

    def branch(self, x, shortcut=None):
        if self.conv_pwl is not None and self.se is None:  # V2's Fused-MBConv: no squeeze-excite
            return conv_project(x, self.conv_exp, self.conv_pwl, shortcut)
        x = self.conv_exp(x)
        if self.conv_pwl is None:  # never given a shortcut (optimize moves it only into a 1x1 conv)
            return x if self.se is None else self.se(x)
        return se_conv(x, self.se, self.conv_pwl, shortcut)
