"""Native weight folder, laid out like a Hugging Face hub model folder (fully offline):

    FOLDER/
      model.safetensors   tensors in effnets' key layout
      config.json         {"library": "effnets", "architecture": NAME, "overrides": {...},
                           "num_classes": N, "in_chans": C, "labels": [...] | null,
                           "preprocessing": {input_size, crop_pct, interpolation, mean, std},
                           "provenance": {...}}
      README.md           model card (hub-style YAML front matter)

``create_model(checkpoint=FOLDER)`` rebuilds the model from config.json (name, overrides,
classes) and loads the tensors; ``read_folder_config`` / ``save_folder`` are the low-level API.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def is_folder(path: Any) -> bool:
    return isinstance(path, (str, os.PathLike)) and Path(path).is_dir() and (Path(path) / CONFIG).is_file()


def read_folder_config(path: str | os.PathLike) -> dict:
    p = Path(path) / CONFIG
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p} is not readable JSON ({e})") from None
    if not isinstance(cfg, dict) or "architecture" not in cfg:
        raise CheckpointError(f"{p} has no 'architecture': not an effnets weight folder")
    if cfg.get("library", "effnets") != "effnets":
        raise CheckpointError(f"{p} was written for library {cfg.get('library')!r}, not effnets; convert it with "
                              "`effnets convert --from timm|torchvision|keras`")
    return cfg


def preprocessing_of(model: nn.Module) -> dict:
    """Preprocessing a model expects: its own ``preprocessing`` dict, else its model card's."""
    own = getattr(model, "preprocessing", None)
    if own:
        return dict(own)
    card = getattr(model, "card", None)
    if card is None:
        return dict(input_size=224, crop_pct=0.875, interpolation="bicubic",
                    mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    size = card.test_size
    img = getattr(model, "img_size", None)
    if img:
        size = int(img[0])
    return dict(input_size=size, crop_pct=card.crop_pct, interpolation=card.interpolation,
                mean=list(card.mean), std=list(card.std))


def _jsonable(v):
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def save_folder(model: nn.Module, folder: str | os.PathLike, *, labels: Sequence[str] | None = None,
                preprocessing: Mapping | None = None, provenance: Mapping | None = None,
                name: str | None = None, overrides: Mapping | None = None) -> Path:
    """Write ``model`` (built by ``create_model``) as a weight folder; returns the folder path."""
    from safetensors.torch import save_file

    name = name or getattr(model, "name", None)
    if not name:
        raise CheckpointError("the model has no registered name (build it with effnets.create_model, or pass name=)")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    num_classes = int(getattr(model, "num_classes", 0))
    labels = list(labels) if labels is not None else getattr(model, "labels", None)
    if labels is not None and len(labels) != num_classes:
        raise CheckpointError(f"{len(labels)} labels for a model with {num_classes} classes")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from .. import __version__
    cfg = {
        "library": "effnets",
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "overrides": _jsonable(dict(overrides if overrides is not None else getattr(model, "overrides", {}))),
        "num_classes": num_classes,
        "in_chans": int(getattr(model, "in_chans", 3)),
        "labels": labels,
        "preprocessing": _jsonable(dict(preprocessing or preprocessing_of(model))),
        "provenance": _jsonable(dict(provenance or {})),
    }
    cfg["provenance"].setdefault("effnets_version", __version__)
    cfg["provenance"].setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    save_file(sd, str(folder / WEIGHTS), metadata={"format": "pt", "architecture": name})
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "README.md").write_text(_readme(cfg))
    return folder


def _readme(cfg: dict) -> str:
    prov = cfg.get("provenance", {})
    pre = cfg["preprocessing"]
    lines = ["---", "library_name: effnets", "tags:", "- image-classification", "- effnets",
             f"- {cfg['architecture']}", "---", "", f"# {cfg['architecture']}", "",
             f"effnets weights: {cfg['num_classes']} classes, overrides {cfg['overrides'] or 'none'}.", "",
             "```python", "import effnets", "model = effnets.create_model(checkpoint=\"path/to/this/folder\")", "```",
             "", f"Preprocessing: resize to {pre.get('input_size')} (crop {pre.get('crop_pct')}, "
             f"{pre.get('interpolation')}), mean {pre.get('mean')}, std {pre.get('std')} on [0, 1] RGB.", ""]
    if prov:
        lines += ["## Provenance", ""] + [f"- {k}: {v}" for k, v in prov.items() if k != "parity"] + [""]
    return "\n".join(lines)


def apply_folder_attrs(model: nn.Module, cfg: dict) -> None:
    """Labels and preprocessing of a folder onto a built model."""
    model.labels = cfg.get("labels")
    if cfg.get("preprocessing"):
        model.preprocessing = dict(cfg["preprocessing"])
    model.provenance = cfg.get("provenance", {})


def load_folder(folder: str | os.PathLike, **kwargs) -> nn.Module:
    """Same as ``create_model(checkpoint=folder, **kwargs)``."""
    from ..factory import create_model
    return create_model(checkpoint=str(folder), **kwargs)


def state_dict_of(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    from .io import read_state_dict
    return read_state_dict(Path(folder) / WEIGHTS)
