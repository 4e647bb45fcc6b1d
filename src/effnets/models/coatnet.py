"""CoAtNet-0 ... CoAtNet-4 (Dai, Liu, Le, Tan; arXiv 2106.04803), C-C-T-T layout.

L (blocks of S1..S4) and D (widths of S0..S4): paper Table 3, as encoded in timm's
``maxxvit.py::model_cfgs['coatnet_N']`` (reference-numbers §5).  Paper params / FLOPs /
ImageNet-1k top-1 at 224: paper Table 4 as transcribed in leondgarse/keras_cv_attention_models
(reference-numbers §5).  Built counts: 25,036,820 / 42,225,776 / 74,684,744 / 166,966,264 /
275,425,288, the same as timm's paper-config ``coatnet_N_224`` (all within 0.7% of the paper).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..nets.coatnet import CoAtNet
from ..registry import ModelCard, ModelEntry, PaperFigures, register

PAPER = "CoAtNet: Marrying Convolution and Attention for All Data Sizes"
ARXIV = "2106.04803"
T4 = "CoAtNet paper Table 4 (ImageNet-1k, 224), via keras_cv_attention_models README"
OVERRIDES = ("img_size", "dropout", "drop_path", "stride_mode")

# name: (depths S1..S4, dims S0..S4, paper figures, stochastic depth)
CONFIGS = {
    "coatnet_0": ((2, 3, 5, 2), (64, 96, 192, 384, 768), PaperFigures(25, 4.2, 81.6, None, T4), 0.2),
    "coatnet_1": ((2, 6, 14, 2), (64, 96, 192, 384, 768), PaperFigures(42, 8.4, 83.3, None, T4), 0.3),
    "coatnet_2": ((2, 6, 14, 2), (128, 128, 256, 512, 1024), PaperFigures(75, 15.7, 84.1, None, T4), 0.5),
    "coatnet_3": ((2, 6, 14, 2), (192, 192, 384, 768, 1536), PaperFigures(168, 34.7, 84.5, None, T4), 0.7),
    "coatnet_4": ((2, 12, 28, 2), (192, 192, 384, 768, 1536),
                  PaperFigures(275, None, None, None, "CoAtNet paper Table 4 (no ImageNet-1k-only result; "
                               "IN-21k pretrained: 87.9 @384, 88.1 @512)"), 0.7),
}

NOTES = ("Paper FLOPs are for pooled 1x1-stride downsampling (stride_mode='1x1', the default); "
         "stride_mode='dw' is the paper's 'strided DConv' variant (CoAtNet-0 4.6G / 82.0) and timm's "
         "coatnet_N_224. Stochastic-depth rates are the paper's ImageNet-1k hyper-parameters as "
         "recalled from its appendix table (not in reference-numbers; CoAtNet-4 has no 1k-only "
         "setting, 0.7 assumed). Crop 0.95 is timm's for its CoAtNet weights; the paper gives none.")


def _entry(name: str, depths, dims, figs: PaperFigures, drop_path: float) -> ModelEntry:
    def build(num_classes: int = 1000, in_chans: int = 3, **overrides) -> CoAtNet:
        kw = dict(img_size=224, dropout=0.0, drop_path=drop_path, stride_mode="1x1")
        kw.update(overrides)
        try:
            return CoAtNet(depths, dims, num_classes=num_classes, in_chans=in_chans, **kw)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None

    card = ModelCard(
        name=name, family="coatnet", paper=PAPER, arxiv=ARXIV, train_size=224, test_size=224,
        crop_pct=0.95, interpolation="bicubic", figures=figs, recipe="coatnet", dropout=0.0,
        drop_path=drop_path, notes=NOTES,
        extra=(("L (S1..S4)", depths), ("D (S0..S4)", dims), ("blocks", "C-C-T-T, head size 32")))
    return ModelEntry(name=name, build=build, card=card, overrides=OVERRIDES)


for _name, (_depths, _dims, _figs, _dp) in CONFIGS.items():
    register(_entry(_name, _depths, _dims, _figs, _dp))
