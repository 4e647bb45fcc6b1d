"""EfficientNetV2 S/M/L/XL and B0-B3 (Tan & Le, arXiv 2104.00298).

Block lists, coefficients, train/eval sizes, dropout and the progressive-learning settings:
google/automl efficientnetv2/effnetv2_configs.py (``v2_*_block``, ``efficientnetv2_params``);
progressive schedule: automl efficientnetv2/main.py (4 stages, ``ibase=128`` from hparams.py).
S is the paper's Table 4.  Paper/README figures: google/automl efficientnetv2/README.md.
Crop, mean/std: timm's pretrained configs for the TF-ported weights (``tf_efficientnetv2_*``).
"""
from __future__ import annotations

from ..registry import ModelCard, PaperFigures, convnet_entry, register
from ..spec import BlockSpec as B
from ..spec import Conventions, HeadSpec, NetSpec, StageSpec, StemSpec

PAPER = "EfficientNetV2: Smaller Models and Faster Training"
ARXIV = "2104.00298"
README = "google/automl efficientnetv2/README.md"

# automl round_filters for V2 has no "not more than 10% down" rule; SE is sized from the block
# input (effnetv2_model.py: int(input_filters * se_ratio)); repeats round up (ceil).
V2_CONV = Conventions(act="silu", ch_round_limit=0.0, depth_round="ceil", se_base="input")


def _fused(c: int, n: int, s: int, e: int) -> B:
    return B("fused", c, n, kernel=3, stride=s, expand=e)


def _mb(c: int, n: int, s: int, e: int) -> B:
    return B("mbconv", c, n, kernel=3, stride=s, expand=e, se=0.25)


# (kind, repeats, stride, expand, out channels) per stage; every kernel is 3x3.
# Fused stages ("c1" in the block strings) carry no SE, MBConv stages SE 0.25.
_F, _M = _fused, _mb
BLOCKS = {
    # 'r1_k3_s1_e1_i32_o16_c1' ... 'r8_k3_s2_e6_i112_o192_se0.25' (v2_base_block)
    "base": (32, (_F(16, 1, 1, 1), _F(32, 2, 2, 4), _F(48, 2, 2, 4),
                  _M(96, 3, 2, 4), _M(112, 5, 1, 6), _M(192, 8, 2, 6))),
    # v2_s_block (paper Table 4)
    "s": (24, (_F(24, 2, 1, 1), _F(48, 4, 2, 4), _F(64, 4, 2, 4),
               _M(128, 6, 2, 4), _M(160, 9, 1, 6), _M(256, 15, 2, 6))),
    # v2_m_block
    "m": (24, (_F(24, 3, 1, 1), _F(48, 5, 2, 4), _F(80, 5, 2, 4),
               _M(160, 7, 2, 4), _M(176, 14, 1, 6), _M(304, 18, 2, 6), _M(512, 5, 1, 6))),
    # v2_l_block
    "l": (32, (_F(32, 4, 1, 1), _F(64, 7, 2, 4), _F(96, 7, 2, 4),
               _M(192, 10, 2, 4), _M(224, 19, 1, 6), _M(384, 25, 2, 6), _M(640, 7, 1, 6))),
    # v2_xl_block ("only for 21k pretraining")
    "xl": (32, (_F(32, 4, 1, 1), _F(64, 8, 2, 4), _F(96, 8, 2, 4),
                _M(192, 16, 2, 4), _M(256, 24, 1, 6), _M(512, 32, 2, 6), _M(640, 8, 1, 6))),
}


def v2_spec(blocks: str) -> NetSpec:
    """An unscaled V2 net: stem conv3x3/2 to the first block's input width (automl: the stem
    takes ``blocks_args[0].input_filters``), the block list, head 1x1 conv to 1280 (scaled)."""
    stem, rows = BLOCKS[blocks]
    return NetSpec(
        stem=StemSpec(stem, kernel=3, stride=2),
        stages=tuple(StageSpec((r,)) for r in rows),
        head=HeadSpec(1280, kind="conv", rule="scale"),
        conv=V2_CONV, resolution=224, dropout=0.2, drop_path=0.2)


# name: (blocks, width, depth, train, eval, dropout, RandAugment max, mixup max, augment,
#        crop_pct, mean/std, figures)  -- effnetv2_configs.py::efficientnetv2_params
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # automl V2 scales inputs to [-1, 1]
MODELS = {
    "s": ("s", 1.0, 1.0, 300, 384, 0.2, 10, 0.0, "randaug", 1.0, _HALF,
          PaperFigures(21.5, 8.4, 83.9, None, README)),
    "m": ("m", 1.0, 1.0, 384, 480, 0.3, 15, 0.2, "randaug", 1.0, _HALF,
          PaperFigures(54.1, 24.7, 85.2, None, README)),
    "l": ("l", 1.0, 1.0, 384, 480, 0.4, 20, 0.5, "randaug", 1.0, _HALF,
          PaperFigures(119.5, 56.3, 85.7, None, README)),
    "xl": ("xl", 1.0, 1.0, 384, 512, 0.4, 20, 0.5, "randaug", 1.0, _HALF,
           PaperFigures(None, None, 87.2, None, README + " (ImageNet-21k pretrained, fine-tuned on 1k)")),
    "b0": ("base", 1.0, 1.0, 192, 224, 0.2, None, 0.0, "effnetv1_autoaug", 0.875, _IMAGENET,
           PaperFigures(7.1, 0.72, 78.7, None, README)),
    "b1": ("base", 1.0, 1.1, 192, 240, 0.2, None, 0.0, "effnetv1_autoaug", 0.882, _IMAGENET,
           PaperFigures(8.1, 1.2, 79.8, None, README)),
    "b2": ("base", 1.1, 1.2, 208, 260, 0.3, None, 0.0, "effnetv1_autoaug", 0.890, _IMAGENET,
           PaperFigures(10.1, 1.7, 80.5, None, README)),
    "b3": ("base", 1.2, 1.4, 240, 300, 0.3, None, 0.0, "effnetv1_autoaug", 0.904, _IMAGENET,
           PaperFigures(14.4, 3.0, 82.1, None, README)),
}

# Progressive learning as released (automl main.py): 4 stages, stage i (1-based) trains at
# int(128 + (train - 128) * i / 4); RandAugment and mixup/cutmix go linearly from 5 and 0 to
# the config's value.  Dropout stays fixed (main.py computes a schedule, then ``del dp_list``).
PROGRESSIVE_STAGES = 4
IMAGE_SIZE_BASE = 128  # hparams.py data.ibase
RANDAUG_MIN = 5

_NOTES = ("TF-ported weights (timm tf_efficientnetv2_*) need padding='same', bn_eps=1e-3. "
          "The paper's Table 6 lists other progressive settings (e.g. S RandAugment 5->15, "
          "L mixup 0.4, dropout 0.1->0.3); the card follows the released configs.")


def _register() -> None:
    for tag, (blocks, w, d, train, test, dropout, ram, mix, aug, crop, (mean, std), figs) in MODELS.items():
        name = f"efficientnetv2_{tag}"
        extra = (
            ("augment", aug),
            ("progressive_stages", PROGRESSIVE_STAGES),
            ("image_size_min", IMAGE_SIZE_BASE),
            ("image_size_max", train),
            ("randaugment_min", RANDAUG_MIN if ram is not None else None),
            ("randaugment_max", ram),
            ("mixup_min", 0.0),
            ("mixup_max", mix),  # cutmix uses the same alpha
        )
        card = ModelCard(
            name=name, family="efficientnetv2", paper=PAPER, arxiv=ARXIV,
            train_size=train, test_size=test, crop_pct=crop, interpolation="bicubic",
            mean=mean, std=std, figures=figs, recipe="efficientnetv2", dropout=dropout,
            drop_path=0.2,  # survival probability 0.8 (automl hparams.py)
            notes=_NOTES, extra=extra)
        # resolution: the eval size, at which the README reports FLOPs
        spec = v2_spec(blocks).replace(width=w, depth=d, resolution=test, dropout=dropout)
        register(convnet_entry(name, spec, card))


_register()
