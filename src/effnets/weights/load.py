"""Load a checkpoint into a model: read safely -> recognise layout -> map onto our names ->
adapt (classifier size, input channels) -> check everything -> copy.  Nothing is copied
unless every tensor fits."""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .io import read_state_dict
from .layouts import detect_layout, module_order, shapes_fit

_SKIP = "num_batches_tracked"


def classifier_prefix(model: nn.Module) -> str:
    return getattr(model, "classifier_name", "classifier")


def _is_classifier(key: str, prefix: str) -> bool:
    return key.startswith(prefix + ".")


def map_to_model(sd: dict[str, torch.Tensor], model: nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a checkpoint's keys to ours. Returns (renamed dict, detected layout)."""
    if hasattr(model, "remap_checkpoint"):  # families with their own layout rules (ViT, CoAtNet)
        sd = model.remap_checkpoint(dict(sd))
    own = model.state_dict()
    layout = detect_layout(sd.keys(), own.keys())
    if layout == "effnets":
        return {k: v for k, v in sd.items()}, layout

    cls = classifier_prefix(model)
    src_keys = [k for k in module_order(list(sd), layout) if not k.endswith(_SKIP)]
    # The source classifier is its final Linear: a 2-D weight (and its bias) at the end.
    src_cls: list[str] = []
    if src_keys and sd[src_keys[-1]].ndim == 1 and len(src_keys) > 1 and sd[src_keys[-2]].ndim == 2:
        src_cls = src_keys[-2:]
    elif src_keys and sd[src_keys[-1]].ndim == 2:
        src_cls = src_keys[-1:]
    src_body = src_keys[: len(src_keys) - len(src_cls)]
    dst_body = [k for k in own if not k.endswith(_SKIP) and not _is_classifier(k, cls)]
    dst_cls = [k for k in own if _is_classifier(k, cls)]
    if len(src_body) != len(dst_body):
        raise CheckpointError(
            f"checkpoint ({layout} layout) has {len(src_body)} tensors outside the classifier but "
            f"{model.__class__.__name__} {getattr(model, 'name', '')} has {len(dst_body)}: it is a different "
            "architecture, or was built with other width/depth settings; nothing was loaded")
    out: dict[str, torch.Tensor] = {}
    bad = []
    for s, d in zip(src_body, dst_body):
        if not shapes_fit(sd[s].shape, own[d].shape):
            bad.append(f"{d} {tuple(own[d].shape)} <- {s} {tuple(sd[s].shape)}")
            if len(bad) >= 10:
                break
        out[d] = sd[s].reshape(own[d].shape) if shapes_fit(sd[s].shape, own[d].shape) else sd[s]
    if bad and not _only_stem(bad, dst_body):
        raise CheckpointError(f"checkpoint ({layout} layout) does not fit the model; first mismatches "
                              f"(ours <- checkpoint): {'; '.join(bad)}; nothing was loaded")
    for s, d in zip(src_cls, dst_cls):
        out[d] = sd[s].reshape(own[d].shape) if sd[s].numel() == own[d].numel() else sd[s]
    return out, layout


def _only_stem(bad: list[str], dst_body: list[str]) -> bool:
    return len(bad) == 1 and bad[0].startswith(dst_body[0] + " ")


def adapt_in_chans(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """First-conv filters for ``in_chans`` inputs from RGB filters: every input channel gets
    the mean of the RGB filters, scaled by 3/in_chans, so a grey image fed on all channels gives
    the same activations as the grey image fed as RGB."""
    mean = weight.float().mean(dim=1, keepdim=True)
    return (mean * (weight.shape[1] / in_chans)).repeat(1, in_chans, 1, 1).to(weight.dtype)


def load_checkpoint(model: nn.Module, checkpoint: str | Mapping[str, Any], prefer_ema: bool = False) -> str:
    """Load ``checkpoint`` into ``model`` in place; returns the detected layout.

    Raises CheckpointError listing missing, unexpected or mis-shaped keys, before changing
    any weight."""
    sd = read_state_dict(checkpoint, prefer_ema=prefer_ema)
    mapped, layout = map_to_model(sd, model)
    own = model.state_dict()
    cls = classifier_prefix(model)

    # classifier of another size (or none): keep ours, freshly initialised
    src_cls = {k: v for k, v in mapped.items() if _is_classifier(k, cls)}
    dst_cls = {k: v for k, v in own.items() if _is_classifier(k, cls)}
    if any(k not in dst_cls or dst_cls[k].shape != v.shape for k, v in src_cls.items()) or \
            (src_cls and set(src_cls) != set(dst_cls)):
        n_src = next((v.shape[0] for k, v in src_cls.items() if k.endswith("weight")), "?")
        warnings.warn(f"checkpoint classifier has {n_src} classes, the model {getattr(model, 'num_classes', '?')}: "
                      "the classifier is re-initialised", stacklevel=3)
        mapped = {k: v for k, v in mapped.items() if not _is_classifier(k, cls)}
        for k in dst_cls:
            mapped[k] = own[k]
    elif not src_cls and dst_cls:
        warnings.warn("checkpoint has no classifier: the classifier is re-initialised", stacklevel=3)
        mapped.update({k: own[k] for k in dst_cls})

    # input channels other than the checkpoint's
    first = next((k for k, v in own.items() if v.ndim == 4), None)
    if first is not None and first in mapped and mapped[first].ndim == 4 and \
            mapped[first].shape[1] != own[first].shape[1] and mapped[first].shape[0] == own[first].shape[0]:
        mapped[first] = adapt_in_chans(mapped[first], own[first].shape[1])

    missing = [k for k in own if k not in mapped and not k.endswith(_SKIP)]
    unexpected = [k for k in mapped if k not in own]
    wrong = [f"{k} {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
             for k in mapped if k in own and mapped[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
        if wrong:
            parts.append(f"mismatched shapes: {'; '.join(wrong[:10])}" + (" ..." if len(wrong) > 10 else ""))
        raise CheckpointError(f"checkpoint ({layout} layout) does not fit {getattr(model, 'name', 'the model')}: "
                              + " | ".join(parts) + "; nothing was loaded")
    for k in own:
        if k.endswith(_SKIP) and k not in mapped:
            mapped[k] = own[k]
    model.load_state_dict(mapped, strict=True)
    return layout
