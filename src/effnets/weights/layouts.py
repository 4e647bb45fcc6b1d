"""Key layouts of other libraries, and mapping them onto ours.

timm and torchvision build the same architectures with other module names.  Rather than one
hand-written rename table per model, a checkpoint is put back into *module order* (the order
in which its library registers parameters) and aligned tensor by tensor with our model, which
registers its layers in the same order; every pair must agree in shape.  Putting keys back
into module order is needed because safetensors files store keys sorted, not in module order.
"""
from __future__ import annotations

import re
from typing import Iterable

import torch

PARAM_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}

# timm: order of named children inside one module (ints sort numerically among themselves).
# "bnK" is not listed: it follows the K-th conv of its parent (timm names BNs after the conv
# they normalise: bn1 after conv_pw in an inverted residual but after conv_dw in a
# depthwise-separable block).
_TIMM_RANK = {name: i for i, name in enumerate([
    "cls_token", "reg_token", "pos_embed", "patch_embed", "stem",
    "conv_stem", "conv1", "conv_pw@ir", "conv_dw", "conv_exp", "conv", "conv2", "conv3",
    "maxpool", "conv_reduce", "conv_expand", "se", "attn", "conv_pw", "conv_pwl", "blocks", "stages", "layer1", "layer2", "layer3", "layer4",
    "conv_head", "norm_head", "downsample", "fc1", "fc2", "norm", "fc_norm", "fc", "classifier", "head",
])}
_BN = re.compile(r"^bn(\d+)$")

# torchvision: top-level containers in module order (below them numeric order is module order).
_TV_TOP = {"features": 0, "layers": 0, "conv_proj": 0, "class_token": 0, "encoder": 1, "avgpool": 2,
           "classifier": 3, "heads": 3, "fc": 3}


def detect_layout(keys: Iterable[str], own_keys: Iterable[str]) -> str:
    """``effnets`` (our names), ``torchvision`` or ``timm``, recognised from the keys."""
    keys = [k for k in keys if not k.endswith("num_batches_tracked")]
    own = set(own_keys)
    if sum(k in own for k in keys) >= 0.9 * max(1, len(keys)):
        return "effnets"
    if any(k.startswith(("features.", "layers.")) for k in keys):
        return "torchvision"
    return "timm"


def _natural(token: str):
    return (0, int(token), "") if token.isdigit() else (1, 0, token)


def _timm_children_order(names: set[str]) -> dict[str, tuple]:
    """Sort keys for the named children of one timm module."""
    convs = sorted((n for n in names if n.startswith("conv")), key=lambda n: _timm_rank(n, names))
    keys = {}
    for n in names:
        m = _BN.match(n)
        if m and 0 < int(m.group(1)) <= len(convs):
            conv_key = _timm_rank(convs[int(m.group(1)) - 1], names)
            keys[n] = (conv_key[0], conv_key[1] + 0.5, n)
        else:
            keys[n] = _timm_rank(n, names)
    return keys


def _timm_rank(name: str, siblings: set[str]) -> tuple:
    if name.isdigit():
        return (0, int(name), "")
    if name == "conv_pw" and "conv_pwl" in siblings:  # inverted residual: expand conv comes first
        name = "conv_pw@ir"
    rank = _TIMM_RANK.get(name)
    return (1, rank, name) if rank is not None else (2, 0, name)


def module_order(keys: list[str], layout: str) -> list[str]:
    """Keys sorted into the order their library registers them."""
    if layout == "effnets":
        return list(keys)
    split = {k: k.split(".") for k in keys}
    if layout == "torchvision":
        def key(k):
            parts = split[k]
            head = (_TV_TOP.get(parts[0], 9), parts[0])
            return (head, tuple(_natural(p) for p in parts[1:-1]), PARAM_ORDER.get(parts[-1], 9), parts[-1])
        return sorted(keys, key=key)
    # timm: rank every path component among its siblings
    children: dict[tuple, set[str]] = {}
    for parts in split.values():
        for i in range(len(parts) - 1):
            children.setdefault(tuple(parts[:i]), set()).add(parts[i])
    orders = {parent: _timm_children_order(names) for parent, names in children.items()}

    def key(k):
        parts = split[k]
        path = tuple(orders[tuple(parts[:i])][parts[i]] for i in range(len(parts) - 1))
        return (path, PARAM_ORDER.get(parts[-1], 9), parts[-1])
    return sorted(keys, key=key)


def shapes_fit(src: torch.Size, dst: torch.Size) -> bool:
    """Equal, or the same matrix as a Linear and as a 1x1 conv."""
    if src == dst:
        return True
    squeeze = lambda s: tuple(s[:2]) if len(s) == 4 and tuple(s[2:]) == (1, 1) else tuple(s)  # noqa: E731
    return squeeze(src) == squeeze(dst)
