"""Vision Transformer Ti/S/B/L (Dosovitskiy et al., arXiv 2010.11929; Ti and S from DeiT,
Touvron et al., arXiv 2012.12877).

Sizes (layers / width / MLP / heads): ViT paper Table 1 for B and L, DeiT paper Table 1 for Ti
and S (see /work/shared/design/reference-numbers.md §6).  Exact parameter counts equal timm's
``vit_*_patch{16,32}_224`` and torchvision's ``vit_b_16`` / ``vit_l_16`` (reference §6).
Preprocessing: mean/std 0.5 and crop 0.9 are those of the released augreg / original JAX
checkpoints (timm pretrained configs).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..nets.vit import VisionTransformer
from ..registry import ModelCard, ModelEntry, PaperFigures, register

VIT_PAPER = "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale"
VIT_ARXIV = "2010.11929"
DEIT = "DeiT paper (arXiv 2012.12877) Table 1 (params) and Table 5 (top-1)"
VIT_T1 = "ViT paper Table 1 (arXiv 2010.11929)"
OVERRIDES = ("img_size", "dropout", "drop_path")

# name: (patch, layers, width, mlp, heads, paper figures, dropout, drop_path, recipe note)
CONFIGS = {
    "vit_tiny_16": (16, 12, 192, 768, 3, PaperFigures(5.0, None, 72.2, None, DEIT), 0.0, 0.1, "deit"),
    "vit_small_16": (16, 12, 384, 1536, 6, PaperFigures(22.0, None, 79.8, None, DEIT), 0.0, 0.1, "deit"),
    "vit_base_16": (16, 12, 768, 3072, 12, PaperFigures(86.0, None, None, None, VIT_T1), 0.1, 0.0, "vit"),
    "vit_base_32": (32, 12, 768, 3072, 12, PaperFigures(None, None, None, None, VIT_T1), 0.1, 0.0, "vit"),
    "vit_large_16": (16, 24, 1024, 4096, 16, PaperFigures(307.0, None, None, None, VIT_T1), 0.1, 0.0, "vit"),
}

NOTES = {
    "deit": "Ti/S are DeiT's sizes; paper figures are DeiT-Ti/S (ImageNet-1k, 224); DeiT recipe: "
            "dropout 0, stochastic depth 0.1. Measured: 5,717,416 / 22,050,664 params, "
            "1.254 / 4.599 GMACs (reference §6).",
    "vit": "ViT paper ImageNet-1k-from-scratch setting: dropout 0.1 (paper Table 3/App. B.1), no "
           "stochastic depth; the paper gives no ImageNet-1k top-1 at 224 for this size (its headline "
           "numbers are pretrained on JFT/ImageNet-21k, fine-tuned at 384). Paper ViT-L is 307M; "
           "the exact count is 304,326,632 (reference §9.13).",
}


def _entry(name: str, patch: int, depth: int, dim: int, mlp: int, heads: int, figs: PaperFigures,
           dropout: float, drop_path: float, recipe: str) -> ModelEntry:
    def build(num_classes: int = 1000, in_chans: int = 3, **overrides) -> VisionTransformer:
        kw = dict(img_size=224, dropout=dropout, drop_path=drop_path)
        kw.update(overrides)
        try:
            return VisionTransformer(patch=patch, dim=dim, depth=depth, heads=heads, mlp_dim=mlp,
                                     num_classes=num_classes, in_chans=in_chans, **kw)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None

    card = ModelCard(
        name=name, family="vit", paper=VIT_PAPER if recipe == "vit" else
        "Training data-efficient image transformers & distillation through attention (DeiT)",
        arxiv=VIT_ARXIV if recipe == "vit" else "2012.12877",
        train_size=224, test_size=224, crop_pct=0.9, interpolation="bicubic",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), figures=figs, recipe=recipe,
        dropout=dropout, drop_path=drop_path, notes=NOTES[recipe],
        extra=(("layers/width/mlp/heads", f"{depth}/{dim}/{mlp}/{heads}"), ("patch", patch)))
    return ModelEntry(name=name, build=build, card=card, overrides=OVERRIDES)


for _name, _cfg in CONFIGS.items():
    register(_entry(_name, *_cfg))
