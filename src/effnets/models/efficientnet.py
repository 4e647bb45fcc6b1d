"""EfficientNet B0-B8 and L2 (Tan & Le, arXiv 1905.11946).

Base network: paper Table 1 (= tensorflow/tpu efficientnet_builder.py _DEFAULT_BLOCKS_ARGS).
Coefficients: tensorflow/tpu efficientnet_builder.py::efficientnet_params.
Paper figures: Table 2 of arXiv v1 (ICML); L2 from the Noisy Student paper / tpu README.
Crop fractions: timm's pretrained configs for the TF-ported weights.
"""
from __future__ import annotations

from ..registry import ModelCard, PaperFigures, convnet_entry, register
from ..spec import BlockSpec as B
from ..spec import Conventions, HeadSpec, NetSpec, StageSpec, StemSpec

PAPER = "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
ARXIV = "1905.11946"
T2 = "EfficientNet paper Table 2 (arXiv v1/ICML)"


def base_spec() -> NetSpec:
    """EfficientNet-B0: MBConv stages with SE 0.25 of the block input, SiLU."""
    return NetSpec(
        stem=StemSpec(32, kernel=3, stride=2),
        stages=(
            StageSpec((B("mbconv", 16, 1, kernel=3, stride=1, expand=1, se=0.25),)),
            StageSpec((B("mbconv", 24, 2, kernel=3, stride=2, expand=6, se=0.25),)),
            StageSpec((B("mbconv", 40, 2, kernel=5, stride=2, expand=6, se=0.25),)),
            StageSpec((B("mbconv", 80, 3, kernel=3, stride=2, expand=6, se=0.25),)),
            StageSpec((B("mbconv", 112, 3, kernel=5, stride=1, expand=6, se=0.25),)),
            StageSpec((B("mbconv", 192, 4, kernel=5, stride=2, expand=6, se=0.25),)),
            StageSpec((B("mbconv", 320, 1, kernel=3, stride=1, expand=6, se=0.25),)),
        ),
        head=HeadSpec(1280, kind="conv", rule="scale"),
        conv=Conventions(act="silu", se_base="input", ch_round_limit=0.9, depth_round="ceil"),
        resolution=224, dropout=0.2, drop_path=0.2,
    )


# name: (width, depth, resolution, dropout, crop_pct, paper figures)
COEFFICIENTS = {
    "b0": (1.0, 1.0, 224, 0.2, 0.875, PaperFigures(5.3, 0.39, 76.3, 93.2, T2)),
    "b1": (1.0, 1.1, 240, 0.2, 0.882, PaperFigures(7.8, 0.70, 78.8, 94.4, T2)),
    "b2": (1.1, 1.2, 260, 0.3, 0.890, PaperFigures(9.2, 1.0, 79.8, 94.9, T2)),
    "b3": (1.2, 1.4, 300, 0.3, 0.904, PaperFigures(12, 1.8, 81.1, 95.5, T2)),
    "b4": (1.4, 1.8, 380, 0.4, 0.922, PaperFigures(19, 4.2, 82.6, 96.3, T2)),
    "b5": (1.6, 2.2, 456, 0.4, 0.934, PaperFigures(30, 9.9, 83.3, 96.7, T2)),
    "b6": (1.8, 2.6, 528, 0.5, 0.942, PaperFigures(43, 19, 84.0, 96.9, T2)),
    "b7": (2.0, 3.1, 600, 0.5, 0.949, PaperFigures(66, 37, 84.4, 97.1, T2)),
    "b8": (2.2, 3.6, 672, 0.5, 0.954,
           PaperFigures(None, None, 85.5, None, "tensorflow/tpu efficientnet README (AdvProp+AA)")),
    "l2": (4.3, 5.3, 800, 0.5, 0.960,
           PaperFigures(480, None, 88.4, None, "Noisy Student paper (arXiv 1911.04252) / tpu README")),
}


def _register() -> None:
    base = base_spec()
    for tag, (w, d, res, dropout, crop, figs) in COEFFICIENTS.items():
        name = f"efficientnet_{tag}"
        card = ModelCard(
            name=name, family="efficientnet", paper=PAPER, arxiv=ARXIV,
            train_size=res, test_size=res, crop_pct=crop, interpolation="bicubic",
            figures=figs, recipe="efficientnet", dropout=dropout, drop_path=0.2,
            notes="stochastic depth 0.2 follows the released code (the v1 text says 0.3)")
        register(convnet_entry(name, base.replace(width=w, depth=d, resolution=res, dropout=dropout), card))


_register()
