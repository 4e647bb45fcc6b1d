"""create_model: registry entry -> overrides -> module -> checkpoint."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from .errors import ConfigError
from .registry import check_overrides, get_entry


def create_model(name: str, *, num_classes: int = 1000, in_chans: int = 3,
                 checkpoint: str | Mapping[str, Any] | None = None, **overrides) -> nn.Module:
    """Build a registered model.

    ``overrides``: ``width``/``depth`` multipliers (replacing the model's own), ``dropout``,
    ``drop_path`` and any convention (``bn_eps``, ``bn_momentum``, ``padding``, ``act``, ...) for
    convnets; see ``effnets.list_overrides(name)``.  ``checkpoint``: a path (``.safetensors``,
    ``.pt``/``.pth`` read with ``weights_only=True``) or a state dict, in effnets', timm's or
    torchvision's key layout.  A classifier of another size is re-initialised (with a warning),
    and a stem for ``in_chans`` != 3 is adapted from the RGB filters."""
    entry = get_entry(name)
    check_overrides(entry, overrides)
    if not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(f"num_classes must be an integer >= 0, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"in_chans must be an integer >= 1, got {in_chans!r}")
    model = entry.build(num_classes=num_classes, in_chans=in_chans, **overrides)
    model.name = name
    model.card = entry.card
    model.overrides = dict(overrides)
    if checkpoint is not None:
        from .weights import load_checkpoint
        load_checkpoint(model, checkpoint)
    return model


def list_overrides(name: str) -> tuple[str, ...]:
    return get_entry(name).overrides
