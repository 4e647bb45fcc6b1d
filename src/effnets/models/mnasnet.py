"""MnasNet-A1 and -B1 (Tan et al., arXiv 1807.11626).

Stage tables: tensorflow/tpu models/official/mnasnet/mnasnet_models.py (mnasnet_a1 with SE in
three stages; mnasnet_b1 without SE, = torchvision mnasnet1_0)."""
from __future__ import annotations

from ..registry import ModelCard, PaperFigures, convnet_entry, register
from ..spec import BlockSpec as B
from ..spec import Conventions, HeadSpec, NetSpec, StageSpec, StemSpec

PAPER = "MnasNet: Platform-Aware Neural Architecture Search for Mobile"


def _ir(c, n, k, s, e, se=0.0):
    return B("mbconv", c, n, kernel=k, stride=s, expand=e, se=se)


def mnasnet_a1_spec() -> NetSpec:
    return NetSpec(
        stem=StemSpec(32),
        stages=(StageSpec((B("ds", 16, 1, kernel=3, skip=False),)), StageSpec((_ir(24, 2, 3, 2, 6),)),
                StageSpec((_ir(40, 3, 5, 2, 3, 0.25),)), StageSpec((_ir(80, 4, 3, 2, 6),)),
                StageSpec((_ir(112, 2, 3, 1, 6, 0.25),)), StageSpec((_ir(160, 3, 5, 2, 6, 0.25),)),
                StageSpec((_ir(320, 1, 3, 1, 6),))),
        head=HeadSpec(1280), conv=Conventions(act="relu", se_base="input"), resolution=224, dropout=0.2)


def mnasnet_b1_spec() -> NetSpec:
    return NetSpec(
        stem=StemSpec(32),
        stages=(StageSpec((B("ds", 16, 1, kernel=3, skip=False),)), StageSpec((_ir(24, 3, 3, 2, 3),)),
                StageSpec((_ir(40, 3, 5, 2, 3),)), StageSpec((_ir(80, 3, 5, 2, 6),)),
                StageSpec((_ir(96, 2, 3, 1, 6),)), StageSpec((_ir(192, 4, 5, 2, 6),)),
                StageSpec((_ir(320, 1, 3, 1, 6),))),
        head=HeadSpec(1280), conv=Conventions(act="relu"), resolution=224, dropout=0.2)


def _register() -> None:
    register(convnet_entry("mnasnet_a1", mnasnet_a1_spec(), ModelCard(
        name="mnasnet_a1", family="mnasnet", paper=PAPER, arxiv="1807.11626", train_size=224, test_size=224,
        crop_pct=0.875, interpolation="bicubic", recipe="efficientnet", dropout=0.2,
        figures=PaperFigures(3.9, 0.312, 75.2, 92.5, "MnasNet paper Table 1 / tensorflow/tpu mnasnet README"))))
    register(convnet_entry("mnasnet_b1", mnasnet_b1_spec(), ModelCard(
        name="mnasnet_b1", family="mnasnet", paper=PAPER, arxiv="1807.11626", train_size=224, test_size=224,
        crop_pct=0.875, interpolation="bilinear", recipe="efficientnet", dropout=0.2,
        figures=PaperFigures(4.4, 0.314, 73.456, 91.51,
                             "torchvision mnasnet1_0 weights meta (B1 has no paper row)"),
        notes="= torchvision mnasnet1_0 and timm mnasnet_100")))


_register()
