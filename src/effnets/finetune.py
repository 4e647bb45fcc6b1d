"""Transfer-learning helpers: new classifier, frozen BN statistics / stages, layer-wise LR decay.

    model = effnets.create_model(checkpoint="weights/efficientnet_b0")   # pretrained folder
    prepare_finetune(model, num_classes=10, freeze_bn=True, freeze_stages=2)
    groups = finetune_param_groups(model, lr=1e-3, layer_decay=0.8, weight_decay=1e-5)
    opt = torch.optim.AdamW(groups)

Layer-wise LR decay (BEiT, arXiv 2106.08254 §2.4; ELECTRA): the classifier trains at ``lr``,
each earlier "layer" at ``layer_decay`` times the next one; here a layer is a stage (stem = 0,
stages 1..n, head n+1; for ViT: patch/pos embeddings = 0, block i = i+1, norm/head last).
No weight decay on biases and norm parameters (1-D tensors), the usual practice (timm, DeiT).
"""
from __future__ import annotations

import re
from typing import Iterable

from torch import nn

from .errors import ConfigError

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "model", model) if type(model).__name__ == "FeatureNet" else model


def reset_classifier(model: nn.Module, num_classes: int) -> nn.Module:
    """A fresh classifier for ``num_classes`` (0 = none, the model returns pooled features)."""
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    m = _base(model)
    if not hasattr(m, "reset_classifier"):
        raise ConfigError(f"{type(m).__name__} has no reset_classifier")
    m.reset_classifier(num_classes)
    if getattr(m, "labels", None) is not None and len(m.labels) != num_classes:
        m.labels = None
    return model


def stage_ids(model: nn.Module) -> dict[str, int]:
    """Layer id of every parameter name, for LR decay and stage freezing (see module doc)."""
    m = _base(model)
    names = [n for n, _ in m.named_parameters()]
    if hasattr(m, "stages"):
        n_stages = len(m.stages)
        pat = re.compile(r"^stages\.(\d+)\.")
    elif hasattr(m, "blocks"):
        n_stages = len(m.blocks)
        pat = re.compile(r"^blocks\.(\d+)\.")
    else:
        raise ConfigError(f"{type(m).__name__} has neither stages nor blocks")
    ids = {}
    for n in names:
        mt = pat.match(n)
        if mt:
            ids[n] = int(mt.group(1)) + 1
        elif n.startswith(("stem.", "cls_token", "pos_embed", "patch_embed.")):
            ids[n] = 0
        else:  # conv_head, norm, pre_logits, classifier / head
            ids[n] = n_stages + 1
    return ids


def num_layers(model: nn.Module) -> int:
    return max(stage_ids(model).values()) + 1


class _FrozenBN:
    """Marker: BatchNorm layers in eval mode whatever ``model.train()`` says."""


def freeze_bn_stats(model: nn.Module, affine: bool = False) -> int:
    """Keep BatchNorm running statistics fixed during training (the layers stay in eval mode
    even after ``model.train()``); ``affine=True`` also freezes gamma/beta.  Returns the count."""
    count = 0
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()
            mod.train = _eval_only.__get__(mod)  # type: ignore[method-assign]
            if affine:
                for p in mod.parameters():
                    p.requires_grad_(False)
            count += 1
    return count


def _eval_only(self, mode: bool = True):
    return nn.Module.train(self, False)


def freeze_stages(model: nn.Module, stages: int | Iterable[int]) -> list[str]:
    """``requires_grad=False`` for layer ids: an int n freezes the stem and the first n-1
    stages (ids 0..n-1); an iterable names the ids.  Frozen BN layers also stop updating
    their statistics.  Returns the frozen parameter names."""
    ids = stage_ids(model)
    wanted = set(range(stages)) if isinstance(stages, int) else set(stages)
    top = max(ids.values())
    if any(i < 0 or i > top for i in wanted):
        raise ConfigError(f"stage ids must be in 0..{top}, got {sorted(wanted)}")
    m = _base(model)
    frozen = [n for n, i in ids.items() if i in wanted]
    params = dict(m.named_parameters())
    for n in frozen:
        params[n].requires_grad_(False)
    for mod_name, mod in m.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            pname = f"{mod_name}.weight"
            if pname in ids and ids[pname] in wanted:
                mod.eval()
                mod.train = _eval_only.__get__(mod)  # type: ignore[method-assign]
    return frozen


def prepare_finetune(model: nn.Module, num_classes: int | None = None, *, freeze_bn: bool = False,
                     freeze_stages: int | Iterable[int] = 0) -> nn.Module:
    """New classifier (when ``num_classes`` differs or is given), frozen BN statistics, frozen
    early stages; returns the model."""
    if num_classes is not None and num_classes != getattr(_base(model), "num_classes", None):
        reset_classifier(model, num_classes)
    if freeze_bn:
        freeze_bn_stats(model)
    if freeze_stages:
        _freeze = globals()["freeze_stages"]
        _freeze(model, freeze_stages)
    return model


def finetune_param_groups(model: nn.Module, lr: float, layer_decay: float = 1.0,
                          weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups with layer-wise LR decay: layer ``i`` of ``L`` gets
    ``lr * layer_decay ** (L - 1 - i)``; 1-D parameters (biases, norms) get no weight decay.
    Frozen parameters are left out.  Each group carries ``lr_scale`` and ``layer`` so a
    scheduler can rescale (``g["lr"] = base_lr * g["lr_scale"]``)."""
    if not 0 < layer_decay <= 1:
        raise ConfigError(f"layer_decay must be in (0, 1], got {layer_decay}")
    ids = stage_ids(model)
    L = max(ids.values()) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for n, p in _base(model).named_parameters():
        if not p.requires_grad:
            continue
        layer = ids[n]
        no_wd = p.ndim <= 1 or n.endswith((".bias", "cls_token", "pos_embed")) or ".table" in n
        key = (layer, no_wd)
        if key not in groups:
            scale = layer_decay ** (L - 1 - layer)
            groups[key] = dict(params=[], names=[], lr=lr * scale, lr_scale=scale, layer=layer,
                               weight_decay=0.0 if no_wd else weight_decay)
        groups[key]["params"].append(p)
        groups[key]["names"].append(n)
    return [groups[k] for k in sorted(groups)]
