"""Backbones: multi-scale feature maps from any registered model.

``create_model(name, features_only=True, out_indices=(...))`` wraps the model in a
``FeatureNet``: calling it returns a list of NCHW maps, one per chosen index of the model's
``feature_info`` (every family lists its stem and stages: ``module``, ``num_chs`` channels,
``reduction`` = input stride).  ``out_indices`` index that full list (negative indices count
from the end); the default takes the last map at each distinct reduction (one map per scale,
e.g. strides 2, 4, 8, 16, 32 for EfficientNet), the usual input of an FPN.

ViT has one scale: its ``blocks.i`` tokens come back as (B, D, H/p, W/p) maps, class token
dropped.  The maps are collected with forward hooks on the named modules, so the wrapped
model's own forward code is used unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import ConfigError


def default_out_indices(feature_info: list[dict]) -> tuple[int, ...]:
    """The last entry of each run of equal reduction (one map per scale)."""
    idx = []
    for i, f in enumerate(feature_info):
        if i + 1 == len(feature_info) or feature_info[i + 1]["reduction"] != f["reduction"]:
            idx.append(i)
    return tuple(idx)


class FeatureNet(nn.Module):
    """Wraps a model; ``forward(x)`` -> list of feature maps at ``out_indices``.

    ``feature_info``: the chosen entries (``module``, ``num_chs``, ``reduction``, ``index``);
    ``channels()`` / ``reductions()`` list them."""

    def __init__(self, model: nn.Module, out_indices: Sequence[int] | None = None):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not info:
            raise ConfigError(f"{type(model).__name__} has no feature_info; it cannot be used as a backbone")
        n = len(info)
        if out_indices is None:
            out_indices = default_out_indices(info)
        try:
            idx = [int(i) for i in out_indices]
        except TypeError:
            raise ConfigError(f"out_indices must be a sequence of integers, got {out_indices!r}") from None
        bad = [i for i in idx if not -n <= i < n]
        if bad:
            raise ConfigError(f"out_indices {bad} out of range: {getattr(model, 'name', type(model).__name__)} has "
                              f"{n} feature levels (0..{n - 1}: "
                              + ", ".join(f"{i}={f['module']}/{f['reduction']}" for i, f in enumerate(info)) + ")")
        idx = sorted({i % n for i in idx})
        self.model = model
        self.out_indices = tuple(idx)
        self.feature_info = [dict(info[i], index=i) for i in idx]
        self.name = getattr(model, "name", None)
        self.tokens = hasattr(model, "patch") and hasattr(model, "num_prefix_tokens")  # ViT-like
        # drop what the features never use (the classifier), keep names for checkpoints
        for attr in ("classifier", "head"):
            if isinstance(getattr(model, attr, None), nn.Linear) and \
                    attr == getattr(model, "classifier_name", "classifier"):
                setattr(model, attr, nn.Identity())
        self._modules_by_name = dict(model.named_modules())
        for f in self.feature_info:
            if f["module"] not in self._modules_by_name:
                raise ConfigError(f"feature module {f['module']!r} not found in {type(model).__name__}")

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self.feature_info]

    def reductions(self) -> list[int]:
        return [f["reduction"] for f in self.feature_info]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs: dict[str, torch.Tensor] = {}
        handles = []
        wanted = [f["module"] for f in self.feature_info]
        for name in set(wanted):
            def hook(_m, _inp, out, name=name):
                outs[name] = out
            handles.append(self._modules_by_name[name].register_forward_hook(hook))
        try:
            self.model.forward_features(x)
        finally:
            for h in handles:
                h.remove()
        maps = [outs[n] for n in wanted]
        if self.tokens:
            p = self.model.patch
            h, w = x.shape[-2] // p, x.shape[-1] // p
            k = self.model.num_prefix_tokens
            maps = [t[:, k:].transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in maps]
        return maps


def features_only(model: nn.Module, out_indices: Sequence[int] | None = None) -> FeatureNet:
    return FeatureNet(model, out_indices)
