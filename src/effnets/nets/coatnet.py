"""CoAtNet (Dai, Liu, Le, Tan 2021, arXiv 2106.04803): C-C-T-T.

  S0  two 3x3 convs, the first with stride 2
  S1  MBConv (expansion 4 of the output width, SE 0.25), pre-norm (BatchNorm), GELU
  S2  MBConv
  S3  Transformer blocks with relative position bias (head size 32), pre-norm (LayerNorm)
  S4  Transformer
  head  global average pool -> LayerNorm -> pre-logits dense + tanh -> classifier

Every stage halves the resolution in its first block, as in the paper (§3.2 / App. A.1):
  MBConv:       x <- Proj(Pool(x)) + Conv(DepthConv(Conv(Norm(x), stride=2)))
  Transformer:  x <- Proj(Pool(x)) + Attention(Pool(Norm(x)))
Pool is a 2x2 average pool and Proj a 1x1 conv (with bias).  ``stride_mode="dw"`` puts the
MBConv stride on the depthwise conv instead (the paper's "strided DConv" variant, also timm's
``coatnet_*_224``); the default ``"1x1"`` is the formula above.

Module names: ``stem.{conv1,conv2}``, ``stages.<i>.<j>``, ``norm``, ``pre_logits.fc``, ``head``.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from ..errors import CheckpointError
from ..layers import ConvNormAct, DropPath, SqueezeExcite, check_rate, init_conv_, linear_schedule, set_dropout
from ..layers.attention import Attention
from ..layers.head import linear_head
from ..layers.memory import act_linear, checkpoint_enabled, checkpoint_module
from ..layers.rel_pos import RelPosBias, resize_rel_pos_table
from .inputs import check_input

LN_EPS = 1e-5  # the paper gives no value; PyTorch's default


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _down(size: tuple[int, int]) -> tuple[int, int]:
    """Map size after a stride-2 layer (ceil, like a padded 3x3/2 conv)."""
    return (-(-size[0] // 2), -(-size[1] // 2))


def _pool() -> nn.AvgPool2d:
    # ceil_mode + no padding count: odd maps still halve like the strided convs of the branch
    return nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)


class Downsample(nn.Module):
    """Residual path of a stage's first block: 2x2 average pool, then 1x1 conv to D_out."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.pool = _pool() if stride == 2 else nn.Identity()
        self.proj = nn.Conv2d(in_chs, out_chs, 1, bias=True) if in_chs != out_chs else nn.Identity()

    def forward(self, x):
        return self.proj(self.pool(x))


class Stem(nn.Module):
    """S0: conv3x3/2 -> BN -> GELU -> conv3x3 (the next block pre-normalises)."""

    def __init__(self, in_chans: int, chs: int):
        super().__init__()
        self.conv1 = ConvNormAct(in_chans, chs, 3, 2, act="gelu")
        self.conv2 = nn.Conv2d(chs, chs, 3, 1, 1, bias=False)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class CoAtMBConv(nn.Module):
    """Pre-norm MBConv: BN(x) -> 1x1 expand (x4 of D_out) -BN-GELU -> 3x3 depthwise -BN-GELU
    -> SE -> 1x1 project (bias, no norm: the next block pre-normalises).

    Not ``blocks.mbconv.MBConv``: that block is post-norm (conv-BN-act, BN on the projection)
    and has no pooled-projection shortcut, both of which change CoAtNet's computation."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, expand: float = 4.0, se: float = 0.25,
                 stride_mode: str = "1x1", drop_path: float = 0.0):
        super().__init__()
        mid = int(out_chs * expand)
        self.shortcut = Downsample(in_chs, out_chs, stride)
        self.pre_norm = nn.BatchNorm2d(in_chs)
        s1, s2 = (stride, 1) if stride_mode == "1x1" else (1, stride)
        self.conv_pw = ConvNormAct(in_chs, mid, 1, s1, act="gelu")
        self.conv_dw = ConvNormAct(mid, mid, 3, s2, groups=mid, act="gelu")
        # SE reduced to 0.25 x D_out (timm's reading of the paper's "shrink rate 0.25", which
        # matches the paper's parameter counts); SiLU inside SE as in EfficientNet
        self.se = SqueezeExcite(mid, max(1, int(out_chs * se)), act="silu") if se > 0 else None
        self.conv_pwl = nn.Conv2d(mid, out_chs, 1, bias=True)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        x = self.conv_dw(self.conv_pw(self.pre_norm(x)))
        if self.se is not None:
            x = self.se(x)
        return shortcut + self.drop_path(self.conv_pwl(x))


class TransformerMlp(nn.Module):
    linear_act = ("fc1", "act")  # act reads only fc1's output, right after it: optimize fuses the two

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)
        self.memory_efficient: bool | None = None  # None: the global default (layers.memory)

    def forward(self, x):  # GELU's output not stored in training (act_linear)
        return self.drop(act_linear(self.fc1(x), self.act, self.fc2, self))


class CoAtTransformer(nn.Module):
    """Pre-norm Transformer block on an NCHW map with relative attention.

    ``size``: the map size this block sees at the model's ``img_size`` (after its own
    downsampling); the bias table is (2H-1)(2W-1) per head for that size."""

    def __init__(self, in_chs: int, out_chs: int, size: tuple[int, int], stride: int = 1, head_dim: int = 32,
                 mlp_ratio: float = 4.0, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        heads = out_chs // head_dim
        self.shortcut = Downsample(in_chs, out_chs, stride)
        self.norm1 = nn.LayerNorm(in_chs, eps=LN_EPS)
        self.pool = _pool() if stride == 2 else nn.Identity()
        self.attn = Attention(in_chs, heads, dim_out=out_chs, qkv_bias=True, proj_drop=dropout)
        self.rel_pos = RelPosBias(size, heads)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(out_chs, eps=LN_EPS)
        self.mlp = TransformerMlp(out_chs, int(out_chs * mlp_ratio), dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut(x)
        y = self.norm1(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # LayerNorm over channels
        y = self.pool(y)
        B, _, H, W = y.shape
        y = self.attn(y.flatten(2).transpose(1, 2), bias=self.rel_pos(H, W))  # (B, HW, C_out)
        x = shortcut.flatten(2).transpose(1, 2) + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.transpose(1, 2).reshape(B, -1, H, W)

    def set_drop_path(self, p: float) -> None:
        self.drop_path1.p = self.drop_path2.p = p


# -- timm maxxvit (``coatnet_*``) checkpoints ---------------------------------------------------
# Exact renames inside a block (timm suffix -> ours); the first match wins.
_TIMM_MBCONV = (
    ("shortcut.expand.", "shortcut.proj."),
    ("pre_norm.", "pre_norm."),
    ("conv1_1x1.", "conv_pw.conv."),
    ("norm1.", "conv_pw.bn."),
    ("conv2_kxk.", "conv_dw.conv."),
    ("norm2.", "conv_dw.bn."),
    ("se.fc1.", "se.conv_reduce."),
    ("se.fc2.", "se.conv_expand."),
    ("conv3_1x1.", "conv_pwl."),
)
_TIMM_TRANSFORMER = (
    ("shortcut.expand.", "shortcut.proj."),
    ("norm1.norm.", "norm1."),  # stride-2 block: Sequential(norm, down=avg pool, no params)
    ("norm1.", "norm1."),
    ("attn.qkv.", "attn.qkv."),
    ("attn.proj.", "attn.proj."),
    ("attn.rel_pos.relative_position_bias_table", "rel_pos.table"),
    ("norm2.", "norm2."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.fc2.", "mlp.fc2."),
)
_TIMM_TOP = (
    ("stem.conv1.", "stem.conv1.conv."),
    ("stem.norm1.", "stem.conv1.bn."),
    ("stem.conv2.", "stem.conv2."),
    ("head.norm.", "norm."),
    ("head.pre_logits.fc.", "pre_logits.fc."),
    ("head.fc.", "head."),
)
_TIMM_BLOCK = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.(.+)$")


def _is_timm_maxxvit(sd: dict) -> bool:
    return any(_TIMM_BLOCK.match(k) for k in sd) and any(k.startswith("stem.norm1.") for k in sd)


def _rename(rest: str, rules) -> str | None:
    for src, dst in rules:
        if rest.startswith(src):
            return dst + rest[len(src):]
    return None


def _from_timm_maxxvit(sd: dict, sizes: dict | None = None) -> dict:
    """timm ``MaxxVit`` (C-C-T-T ``coatnet_*``) keys and tensor layouts -> ours.

    Same tensors, stored differently:
      * transformer 1x1 ``Conv2d`` weights (qkv, proj, mlp) -> ``Linear``: drop the 1x1 dims;
      * qkv output channels: timm's ``head_first`` layout is (heads, 3, head_dim), ours
        (3, heads, head_dim) -> permute rows (weight and bias);
      * relative-position table: timm (L, heads) with L = (2H-1)(2W-1) flattened row-major over
        (dy, dx) -> ours (heads, 2H-1, 2W-1);
      * classifier head ``head.fc`` -> ``head``; final LayerNorm ``head.norm`` -> ``norm``.
    ``sizes``: our transformer blocks' map sizes by block name, to unflatten non-square tables."""
    out: dict = {}
    for k, v in sd.items():
        m = _TIMM_BLOCK.match(k)
        if m is None:
            new = _rename(k, _TIMM_TOP)
            if new is None:
                raise CheckpointError(f"timm CoAtNet checkpoint: no rule for key {k!r}")
            out[new] = v
            continue
        si, bi, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        is_tf = f"stages.{si}.blocks.{bi}.attn.qkv.weight" in sd
        new = _rename(rest, _TIMM_TRANSFORMER if is_tf else _TIMM_MBCONV)
        if new is None:
            raise CheckpointError(f"timm CoAtNet checkpoint: no rule for key {k!r}")
        if is_tf:
            if new.startswith(("attn.", "mlp.")) and new.endswith("weight") and v.ndim == 4:
                v = v.flatten(1)  # (out, in, 1, 1) -> (out, in)
            if new.startswith("attn.qkv."):
                heads = sd[f"stages.{si}.blocks.{bi}.attn.rel_pos.relative_position_bias_table"].shape[-1]
                rows = v.shape[0]
                v = v.reshape(heads, 3, rows // (3 * heads), *v.shape[1:]).transpose(0, 1).reshape(v.shape)
            elif new == "rel_pos.table":
                n, heads = v.shape
                size = (sizes or {}).get(f"stages.{si}.{bi}")
                if size is not None and (2 * size[0] - 1) * (2 * size[1] - 1) == n:
                    shape = (2 * size[0] - 1, 2 * size[1] - 1)
                else:  # made at another input size: assume a square map, resized afterwards
                    side = int(round(n ** 0.5))
                    if side * side != n:
                        raise CheckpointError(f"timm CoAtNet checkpoint: {k} has {n} offsets, which fit "
                                              "neither this model's map nor a square one")
                    shape = (side, side)
                v = v.t().reshape(heads, *shape)
        out[f"stages.{si}.{bi}.{new}"] = v
    return out


class CoAtNet(nn.Module):
    """CoAtNet with ``depths`` = blocks of S1..S4 and ``dims`` = widths of S0..S4."""

    classifier_name = "head"  # what effnets.weights treats as the classifier

    def __init__(self, depths: tuple[int, int, int, int], dims: tuple[int, int, int, int, int], *,
                 img_size=224, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.0,
                 drop_path: float = 0.0, stride_mode: str = "1x1", head_hidden: bool = True):
        super().__init__()
        if len(depths) != 4 or len(dims) != 5:
            raise ValueError(f"CoAtNet needs 4 stage depths and 5 widths, got {depths}, {dims}")
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"num_classes must be >= 0 and in_chans >= 1, got {num_classes}, {in_chans}")
        if stride_mode not in ("1x1", "dw"):
            raise ValueError(f"stride_mode must be '1x1' (paper) or 'dw' (strided DConv), got {stride_mode!r}")
        for k, v in (("dropout", dropout), ("drop_path", drop_path)):
            if not 0 <= v < 1:
                raise ValueError(f"{k} must be in [0, 1), got {v}")
        self.img_size = _pair(img_size)
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0])
        size = _down(self.img_size)
        reduction = 2
        self.feature_info = [dict(module="stem", num_chs=dims[0], reduction=reduction)]
        rates = linear_schedule(drop_path, sum(depths))
        stages, idx, in_chs = [], 0, dims[0]
        for si, (n, out_chs) in enumerate(zip(depths, dims[1:])):
            size, reduction = _down(size), reduction * 2
            blocks = []
            for j in range(n):
                stride = 2 if j == 0 else 1
                if si < 2:
                    blocks.append(CoAtMBConv(in_chs, out_chs, stride, stride_mode=stride_mode, drop_path=rates[idx]))
                else:
                    blocks.append(CoAtTransformer(in_chs, out_chs, size, stride, dropout=dropout,
                                                  drop_path=rates[idx]))
                in_chs, idx = out_chs, idx + 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(module=f"stages.{si}", num_chs=out_chs, reduction=reduction))
        self.stages = nn.Sequential(*stages)

        self.num_features = in_chs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(in_chs, eps=LN_EPS)
        # A D4 -> D4 tanh pre-logits layer, as ViT's classification head (ViT §3.1) and timm's
        # paper configs; without it CoAtNet-0 has 24.45M params, outside 2% of the paper's 25M.
        self.pre_logits = nn.Sequential()
        if head_hidden:
            self.pre_logits.add_module("fc", nn.Linear(in_chs, in_chs))
            self.pre_logits.add_module("act", nn.Tanh())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Convs: normal(0, sqrt(2/fan_out)); dense layers and relative-position tables:
        truncated normal 0.02 (ViT/timm); zero biases; norms 1/0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.LayerNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, RelPosBias):
                nn.init.trunc_normal_(m.table, std=0.02)

    def remap_checkpoint(self, state_dict: dict) -> dict:
        """Rename a timm ``maxxvit`` CoAtNet state dict (``coatnet_*``) to our names, then resize
        every relative-position table made at another input size to ours.  Our own layout
        passes through unchanged."""
        sd = dict(state_dict)
        if _is_timm_maxxvit(sd):
            sizes = {n[: -len(".rel_pos")]: m.size for n, m in self.named_modules() if isinstance(m, RelPosBias)}
            sd = _from_timm_maxxvit(sd, sizes)
        own = self.state_dict()
        for name, m in self.named_modules():
            if isinstance(m, RelPosBias):
                key = f"{name}.table"
                t = sd.get(key)
                if t is not None and t.ndim == 3 and t.shape != own[key].shape and t.shape[0] == m.num_heads:
                    sd[key] = resize_rel_pos_table(t, m.size, m.interpolation)
        return sd

    # -- regularisation ----------------------------------------------------------------------
    def _blocks(self):
        return [b for s in self.stages for b in s]

    def set_regularization(self, dropout: float | None = None, drop_path: float | None = None) -> None:
        if dropout is not None:
            set_dropout(self, dropout)
        if drop_path is not None:
            check_rate("drop_path", drop_path)
            blocks = self._blocks()
            for b, p in zip(blocks, linear_schedule(drop_path, len(blocks))):
                if isinstance(b, CoAtTransformer):
                    b.set_drop_path(p)
                else:
                    b.drop_path.p = p

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes)

    # -- forward -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> S4 map (B, D4, H/32, W/32)."""
        x = self.stem(x)
        if checkpoint_enabled(self):
            for stage in self.stages:
                x = checkpoint_module(stage, x)
            return x
        return self.stages(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-stage activation checkpointing in training (effnets.layers.memory)."""
        self.grad_checkpointing = bool(enable)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(self.norm(self.pool(x).flatten(1)))
        x = self.dropout(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, allow_empty=False)
        return self.forward_head(self.forward_features(x))
