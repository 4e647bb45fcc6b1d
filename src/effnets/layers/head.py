"""Classifier heads."""
from __future__ import annotations

from torch import nn


def linear_head(in_features: int, num_classes: int, std: float = 0.02) -> nn.Module:
    """A Linear classifier initialised N(0, std) truncated at 2 std, zero bias (ViT / timm
    convention), or Identity for ``num_classes`` 0 (a feature extractor)."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=std)
    nn.init.zeros_(head.bias)
    return head
