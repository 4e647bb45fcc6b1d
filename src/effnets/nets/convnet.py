"""The one convnet builder: NetSpec -> module, for MobileNet V1-V3, MnasNet, EfficientNet
V1/V2 and ResNet-RS.  Module names are explicit: ``stem``, ``stages.<i>.<j>.<layer>``,
``conv_head``, ``classifier``."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..blocks import BLOCKS, BlockArgs, Bottleneck
from ..layers import ConvNormAct, check_rate, init_conv_, linear_schedule, make_act, set_dropout, stage_schedule
from ..layers.memory import checkpoint_enabled, checkpoint_module
from .inputs import check_input
from ..scaling import scale
from ..spec import NetSpec


class DeepStem(nn.Module):
    """ResNet-D stem: three 3x3 convs (first strided), then a max-pool or a strided conv."""

    def __init__(self, in_chans: int, widths: tuple[int, ...], out_chs: int, pool: str, conv_kw: dict):
        super().__init__()
        chs = [in_chans, *widths[:-1], out_chs] if widths else [in_chans, out_chs]
        self.conv1 = ConvNormAct(chs[0], chs[1], 3, 2, **conv_kw)
        self.conv2 = ConvNormAct(chs[1], chs[2], 3, 1, **conv_kw)
        self.conv3 = ConvNormAct(chs[2], chs[3], 3, 1, **conv_kw)
        if pool == "conv":
            self.pool = ConvNormAct(out_chs, out_chs, 3, 2, **conv_kw)
        elif pool == "max":
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            self.pool = nn.Identity()

    def forward(self, x):
        return self.pool(self.conv3(self.conv2(self.conv1(x))))


def drop_path_rates(spec: NetSpec, rate: float) -> list[float]:
    if spec.conv.drop_path_schedule == "stage":
        return stage_schedule(rate, [s.num_blocks for s in spec.stages])
    return linear_schedule(rate, spec.num_blocks)


class ConvNet(nn.Module):
    """A convnet built from a NetSpec (scaled first if it is not concrete)."""

    def __init__(self, spec: NetSpec, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        if not spec.concrete:
            spec = scale(spec)
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"num_classes must be >= 0 and in_chans >= 1, got {num_classes}, {in_chans}")
        self.spec = spec
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.grad_checkpointing = False
        c = spec.conv
        conv_kw = dict(padding=c.padding, bn_eps=c.bn_eps, bn_momentum=c.bn_momentum)

        st = spec.stem
        stem_act = st.act or c.act
        if st.kind == "deep":
            self.stem = DeepStem(in_chans, st.widths, st.out_chs, st.pool, dict(conv_kw, act=stem_act))
            reduction = 4 if st.pool != "none" else 2
        else:
            self.stem = ConvNormAct(in_chans, st.out_chs, st.kernel, st.stride, act=stem_act, **conv_kw)
            reduction = st.stride
        self.feature_info = [dict(module="stem", num_chs=st.out_chs, reduction=reduction)]

        rates = drop_path_rates(spec, spec.drop_path)
        in_chs, idx, stages = st.out_chs, 0, []
        for si, stage in enumerate(spec.stages):
            blocks = []
            for row in stage.rows:
                for r in range(row.repeats):
                    args = BlockArgs(row, in_chs, row.stride if r == 0 else 1, c, rates[idx])
                    blocks.append(BLOCKS[row.kind](args))
                    in_chs, idx = row.out_chs, idx + 1
            reduction *= stage.stride
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(module=f"stages.{si}", num_chs=in_chs, reduction=reduction))
        self.stages = nn.Sequential(*stages)

        h = spec.head
        head_act = h.act or c.act
        self.head_kind = h.kind
        if h.kind == "conv":
            self.conv_head = ConvNormAct(in_chs, h.chs, 1, act=head_act, **conv_kw)
            in_chs = h.chs
            self.feature_info[-1] = dict(module="conv_head", num_chs=in_chs, reduction=reduction)
        elif h.kind == "pool_conv":
            self.conv_head = nn.Conv2d(in_chs, h.chs, 1, bias=True)
            self.head_act = make_act(head_act)
            in_chs = h.chs
        else:
            self.conv_head = None
        self.num_features = in_chs
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.init_weights()

    # -- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """TF EfficientNet initialisation: convs N(0, sqrt(2 / fan_out)) (fan_out counts
        the output channels per group), dense U(+-1/sqrt(out)), BN gamma 1 / beta 0; ResNet-RS
        keeps its zeroed last BN gamma.  Skipped on the meta device (shapes only; random init
        there is slow and meaningless)."""
        if any(p.is_meta for p in self.parameters()):
            return
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                init_conv_(m)
            elif isinstance(m, nn.Linear):
                r = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -r, r)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.spec.conv.zero_init_last:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.conv3.bn.weight)

    # -- regularisation ----------------------------------------------------------------------
    def set_regularization(self, dropout: float | None = None, drop_path: float | None = None) -> None:
        """Change dropout before the classifier and the stochastic-depth rate (re-spread with
        the net's schedule) on a live model, e.g. per progressive-learning stage."""
        if dropout is not None:
            set_dropout(self, dropout)
        if drop_path is not None:
            check_rate("drop_path", drop_path)
            blocks = [b for s in self.stages for b in s]
            for b, p in zip(blocks, drop_path_rates(self.spec, drop_path)):
                if getattr(b, "drop_path", None) is not None:
                    b.drop_path.p = p

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            r = 1.0 / math.sqrt(num_classes)
            nn.init.uniform_(self.classifier.weight, -r, r)
            nn.init.zeros_(self.classifier.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-stage activation checkpointing in training: only stage inputs are kept, each
        stage is recomputed in backward (BN running stats updated once, drop-path masks
        replayed); see ``effnets.layers.memory.checkpoint_module``."""
        self.grad_checkpointing = bool(enable)

    # -- forward -----------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if checkpoint_enabled(self):
            for stage in self.stages:
                x = checkpoint_module(stage, x)
        else:
            x = self.stages(x)
        if self.head_kind == "conv":
            x = self.conv_head(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(x)
        if self.head_kind == "pool_conv":
            x = self.head_act(self.conv_head(x))
        x = self.dropout(x.flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x)
        return self.forward_head(self.forward_features(x))
