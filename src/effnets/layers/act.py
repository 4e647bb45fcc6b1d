"""Activation lookup by name: one table, so specs can say ``act="hard_swish"``."""
from __future__ import annotations

from torch import nn

_ACTS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hard_swish": nn.Hardswish,
    "hard_sigmoid": nn.Hardsigmoid,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "identity": nn.Identity,
}

ACT_NAMES = tuple(sorted(_ACTS))


def make_act(name: str | None) -> nn.Module:
    """A fresh activation module; ``None`` or ``"identity"`` gives ``nn.Identity``.

    Activations are created without ``inplace`` so the same graph is safe for autograd,
    export and BN folding."""
    if name is None:
        return nn.Identity()
    try:
        return _ACTS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACT_NAMES)}") from None
