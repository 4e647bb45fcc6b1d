"""create_model: registry entry -> overrides -> module -> checkpoint."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import nn

from .errors import ConfigError
from .registry import check_overrides, get_entry


def create_model(name: str | None = None, *, num_classes: int | None = None, in_chans: int = 3,
                 checkpoint: str | Mapping[str, Any] | None = None, features_only: bool = False,
                 out_indices: Sequence[int] | None = None, **overrides) -> nn.Module:
    """Build a registered model.

    ``overrides``: ``width``/``depth`` multipliers (replacing the model's own), ``dropout``,
    ``drop_path`` and any convention (``bn_eps``, ``bn_momentum``, ``padding``, ``act``, ...) for
    convnets; see ``effnets.list_overrides(name)``.  ``checkpoint``: a path (``.safetensors``,
    ``.pt``/``.pth`` read with ``weights_only=True``) or a state dict, in effnets', timm's or
    torchvision's key layout.  A classifier of another size is re-initialised (with a warning),
    and a stem for ``in_chans`` != 3 is adapted from the RGB filters.  A weight folder written by
    ``effnets convert`` / ``weights.folder.save_folder`` (config.json + model.safetensors) supplies
    the name, overrides (explicit ones win), class count, labels and preprocessing.
    ``features_only``: return a ``features.FeatureNet`` giving the multi-scale maps at
    ``out_indices`` of ``model.feature_info``."""
    folder_cfg = None
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        from .weights.folder import is_folder, read_folder_config
        if is_folder(checkpoint):
            folder_cfg = read_folder_config(checkpoint)
            if name is not None and name != folder_cfg["architecture"]:
                raise ConfigError(f"{checkpoint} holds {folder_cfg['architecture']!r} weights, not {name!r}")
            name = folder_cfg["architecture"]
            overrides = {**folder_cfg.get("overrides", {}), **overrides}
            if num_classes is None:
                num_classes = int(folder_cfg.get("num_classes", 1000))
    if name is None:
        raise ConfigError("create_model needs a model name (or checkpoint=FOLDER with a config.json)")
    if num_classes is None:
        num_classes = 1000
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
    if folder_cfg is not None:
        from .weights.folder import apply_folder_attrs
        apply_folder_attrs(model, folder_cfg)
        if model.labels is not None and len(model.labels) != num_classes:
            model.labels = None  # classifier re-initialised for another class count
    if features_only:
        from .features import FeatureNet
        return FeatureNet(model, out_indices)
    if out_indices is not None:
        raise ConfigError("out_indices is only used with features_only=True")
    return model


def list_overrides(name: str) -> tuple[str, ...]:
    return get_entry(name).overrides
