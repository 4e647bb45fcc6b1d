"""ResNet-RS 50-420 (Bello et al., "Revisiting ResNets", arXiv 2103.07579).

Architecture: tensorflow/tpu models/official/resnet/resnet_model.py (``use_resnetd_stem``,
``replace_stem_max_pool``, ``resnetd_shortcut``, ``se_ratio`` 0.25 of the block output, zero-init
last BN, stage-wise drop connect), with the per-depth layer counts of that file.
Per-model regularisation and image sizes: tensorflow/tpu
models/official/resnet/resnet_rs/configs/resnetrs*_i*.yaml.  Top-1: the TF1 README in the same
folder (the paper's numbers).  Eval crop: resnet_preprocessing.py, size / (size + 32).
"""
from __future__ import annotations

from ..registry import ModelCard, PaperFigures, convnet_entry, register
from ..spec import BlockSpec as B
from ..spec import Conventions, HeadSpec, NetSpec, StageSpec, StemSpec

PAPER = "Revisiting ResNets: Improved Training and Scaling Strategies"
ARXIV = "2103.07579"
README = "tensorflow/tpu models/official/resnet/resnet_rs/README.md (= paper)"

# ReLU (paper and TF1 code; TF2 Model Garden switched to swish).  SE reduces from the block
# output (``se_base="expanded"``: the bottleneck passes its output width), int(4*filters*0.25).
RS_CONV = Conventions(act="relu", se_base="expanded", se_divisor=1,
                      drop_path_schedule="stage", zero_init_last=True, avg_down=True)

# bottleneck blocks per stage, resnet_model.py (reference-numbers §4a)
LAYERS = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}


def resnet_rs_spec(depth: int) -> NetSpec:
    """Deep stem 32-32-64 with a strided 3x3 conv instead of the max-pool, four bottleneck
    stages of width 64..512 (output x4, SE 0.25), no head conv."""
    rows = [B("bottleneck", 4 * w, n, kernel=3, stride=s, expand=0.25, se=0.25)
            for w, n, s in zip((64, 128, 256, 512), LAYERS[depth], (1, 2, 2, 2))]
    return NetSpec(
        stem=StemSpec(64, kind="deep", widths=(32, 32, 64), pool="conv"),
        stages=tuple(StageSpec((r,)) for r in rows),
        head=HeadSpec(kind="none"),
        conv=RS_CONV, resolution=224, dropout=0.25, drop_path=0.0)


# Released configs per depth: (image size, dropout, stochastic depth, RandAugment magnitude,
# TF1 README top-1).  RandAugment always uses 2 layers.  The card describes the LAST
# (largest) config of each depth; the others are listed in its ``extra``.
CONFIGS = {
    50: ((160, 0.25, 0.0, 10, 78.8),),
    101: ((160, 0.25, 0.0, 10, 80.3), (192, 0.25, 0.0, 15, 81.2)),
    152: ((192, 0.25, 0.0, 15, 82.0), (224, 0.25, 0.0, 15, 82.2), (256, 0.25, 0.0, 15, 83.0)),
    200: ((256, 0.25, 0.1, 15, 83.4),),
    270: ((256, 0.25, 0.1, 15, 83.8),),
    350: ((256, 0.25, 0.1, 15, 84.0), (320, 0.4, 0.1, 15, 84.2)),
    420: ((320, 0.4, 0.1, 15, 84.4),),
}

CROP_PADDING = 32  # resnet_preprocessing.py: eval centre crop of size / (size + 32)

_NOTES = ("Train and eval at the config's image size. The paper's FLOPs appear to be ~2x MACs. "
          "timm's resnetrs* weights were evaluated at larger test sizes with other crops.")


def _describe(cfg: tuple) -> str:
    size, dropout, sd, ram, top1 = cfg
    return f"{size}px: dropout {dropout:g}, stochastic depth {sd:g}, RandAugment {ram}, top-1 {top1}"


def _register() -> None:
    for depth, configs in CONFIGS.items():
        size, dropout, sd, ram, top1 = configs[-1]
        name = f"resnet_rs_{depth}"
        extra = (
            ("randaugment_layers", 2),
            ("randaugment_magnitude", ram),
            ("configs", tuple(_describe(c) for c in configs)),
        )
        card = ModelCard(
            name=name, family="resnet_rs", paper=PAPER, arxiv=ARXIV,
            train_size=size, test_size=size, crop_pct=round(size / (size + CROP_PADDING), 3),
            interpolation="bicubic", figures=PaperFigures(top1=top1, source=README),
            recipe="resnet_rs", dropout=dropout, drop_path=sd, notes=_NOTES, extra=extra)
        spec = resnet_rs_spec(depth).replace(resolution=size, dropout=dropout, drop_path=sd)
        register(convnet_entry(name, spec, card))


_register()
