"""MobileNet V1 (arXiv 1704.04861), V2 (arXiv 1801.04381) and V3 (arXiv 1905.02244).

Stage tables: the papers' tables, as in tensorflow/models research/slim (mobilenet_v1.py,
mobilenet/mobilenet_v2.py, mobilenet/mobilenet_v3.py). The V3-Small head is 1024 wide as in
slim's V3_SMALL definition (the paper table's 1280 would add ~0.4M parameters).
"""
from __future__ import annotations

from ..registry import ModelCard, PaperFigures, convnet_entry, register
from ..spec import BlockSpec as B
from ..spec import Conventions, HeadSpec, NetSpec, StageSpec, StemSpec


def mobilenet_v1_spec() -> NetSpec:
    """13 depthwise-separable blocks (ReLU after both convs), no head conv."""
    ds = lambda c, n=1, s=1: B("ds", c, n, kernel=3, stride=s, pw_act=True, skip=False)  # noqa: E731
    return NetSpec(
        stem=StemSpec(32),
        stages=(StageSpec((ds(64),)), StageSpec((ds(128, 2, 2),)), StageSpec((ds(256, 2, 2),)),
                StageSpec((ds(512, 6, 2),)), StageSpec((ds(1024, 2, 2),))),
        head=HeadSpec(kind="none"),
        conv=Conventions(act="relu6"), resolution=224, dropout=0.2)


def mobilenet_v2_spec() -> NetSpec:
    ir = lambda c, n, s, e=6: B("mbconv", c, n, kernel=3, stride=s, expand=e)  # noqa: E731
    return NetSpec(
        stem=StemSpec(32),
        stages=(StageSpec((ir(16, 1, 1, 1),)), StageSpec((ir(24, 2, 2),)), StageSpec((ir(32, 3, 2),)),
                StageSpec((ir(64, 4, 2),)), StageSpec((ir(96, 3, 1),)), StageSpec((ir(160, 3, 2),)),
                StageSpec((ir(320, 1, 1),))),
        head=HeadSpec(1280, kind="conv", rule="max"),
        conv=Conventions(act="relu6"), resolution=224, dropout=0.2)


V3_CONV = Conventions(act="hard_swish", se_base="expanded", se_divisor=8, se_act="relu", se_gate="hard_sigmoid")


def mobilenet_v3_large_spec() -> NetSpec:
    def ir(c, k, s, e, se=0.0, act=None, n=1):
        return B("mbconv", c, n, kernel=k, stride=s, expand=e, se=se, act=act)
    return NetSpec(
        stem=StemSpec(16),
        stages=(
            StageSpec((ir(16, 3, 1, 1, act="relu"),)),
            StageSpec((ir(24, 3, 2, 4, act="relu"), ir(24, 3, 1, 3, act="relu"))),
            StageSpec((ir(40, 5, 2, 3, 0.25, "relu", n=3),)),
            StageSpec((ir(80, 3, 2, 6), ir(80, 3, 1, 2.5), ir(80, 3, 1, 2.3, n=2))),
            StageSpec((ir(112, 3, 1, 6, 0.25, n=2),)),
            StageSpec((ir(160, 5, 2, 6, 0.25, n=3),)),
            StageSpec((B("conv", 960, 1, kernel=1),)),
        ),
        head=HeadSpec(1280, kind="pool_conv", rule="fixed"),
        conv=V3_CONV, resolution=224, dropout=0.2)


def mobilenet_v3_small_spec() -> NetSpec:
    def ir(c, k, s, e, se=0.0, act=None, n=1):
        return B("mbconv", c, n, kernel=k, stride=s, expand=e, se=se, act=act)
    return NetSpec(
        stem=StemSpec(16),
        stages=(
            StageSpec((ir(16, 3, 2, 1, 0.25, "relu"),)),
            StageSpec((ir(24, 3, 2, 4.5, act="relu"), ir(24, 3, 1, 3.67, act="relu"))),
            StageSpec((ir(40, 5, 2, 4, 0.25), ir(40, 5, 1, 6, 0.25, n=2))),
            StageSpec((ir(48, 5, 1, 3, 0.25, n=2),)),
            StageSpec((ir(96, 5, 2, 6, 0.25, n=3),)),
            StageSpec((B("conv", 576, 1, kernel=1),)),
        ),
        head=HeadSpec(1024, kind="pool_conv", rule="fixed"),
        conv=V3_CONV, resolution=224, dropout=0.2)


def _card(name, paper, arxiv, figs, interpolation="bilinear", **kw):
    return ModelCard(name=name, family="mobilenet", paper=paper, arxiv=arxiv, train_size=224, test_size=224,
                     crop_pct=0.875, interpolation=interpolation, figures=figs, recipe="efficientnet",
                     dropout=0.2, **kw)


def _register() -> None:
    register(convnet_entry("mobilenet_v1", mobilenet_v1_spec(), _card(
        "mobilenet_v1", "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision Applications",
        "1704.04861", PaperFigures(4.2, 0.569, 70.6, None, "MobileNetV1 paper Table 6 (1.0 MobileNet-224)"))))
    register(convnet_entry("mobilenet_v2", mobilenet_v2_spec(), _card(
        "mobilenet_v2", "MobileNetV2: Inverted Residuals and Linear Bottlenecks", "1801.04381",
        PaperFigures(3.4, 0.300, 72.0, None, "MobileNetV2 paper Table 4"),
        notes="width=1.4 gives MobileNetV2-1.4 (head stays max(1280, scaled))")))
    v3 = "Searching for MobileNetV3"
    register(convnet_entry("mobilenet_v3_large", mobilenet_v3_large_spec(), _card(
        "mobilenet_v3_large", v3, "1905.02244", PaperFigures(5.4, 0.219, 75.2, None, "MobileNetV3 paper Table 3"))))
    register(convnet_entry("mobilenet_v3_small", mobilenet_v3_small_spec(), _card(
        "mobilenet_v3_small", v3, "1905.02244", PaperFigures(2.9, 0.066, 67.4, None, "MobileNetV3 paper Table 3"),
        notes="head is 1024 wide as in the reference code (2.54M params); the paper's 2.9M counts 1280")))


_register()
