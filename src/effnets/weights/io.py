"""Reading checkpoints safely: safetensors, or torch files with ``weights_only=True`` (a
pickle can run code; ``weights_only`` refuses anything but tensors and plain containers)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError

# Containers that training scripts wrap state dicts in (timm, torchvision references, ours).
_PLAIN_KEYS = ("state_dict", "model", "module")
_EMA_KEYS = ("state_dict_ema", "model_ema", "ema")


def read_state_dict(source: str | os.PathLike | Mapping[str, Any], prefer_ema: bool = False) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from a path or a (possibly wrapped) mapping."""
    if isinstance(source, (str, os.PathLike)):
        obj = _read_file(Path(source))
    elif isinstance(source, Mapping):
        obj = source
    else:
        raise CheckpointError(f"checkpoint must be a path or a state dict, got {type(source).__name__}")
    return _unwrap(obj, prefer_ema)


def _read_file(path: Path) -> Any:
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin", "model.pt", "model.pth"):
            if (path / name).is_file():
                return _read_file(path / name)
        raise CheckpointError(f"{path} is a folder without model.safetensors; expected a weights file or a "
                              "folder written by `effnets convert`")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CheckpointError(
                f"{path} could not be loaded with weights_only=True, so it was refused without running any "
                f"code it may contain ({msg}). Save plain state dicts (torch.save(model.state_dict())) or "
                "use .safetensors") from None
    raise CheckpointError(f"unsupported checkpoint type {suffix!r} for {path}; use .safetensors, .pt or .pth")


def _unwrap(obj: Any, prefer_ema: bool) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    keys = _EMA_KEYS + _PLAIN_KEYS if prefer_ema else _PLAIN_KEYS + _EMA_KEYS
    for k in keys:
        if k in obj and isinstance(obj[k], Mapping) and obj[k] and not isinstance(obj[k], torch.Tensor):
            return _unwrap(obj[k], prefer_ema)
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue  # metadata next to the tensors (epoch, config, ...)
        out[k[len("module."):] if k.startswith("module.") else k] = v
    if not out:
        raise CheckpointError("checkpoint contains no tensors")
    return _from_training_checkpoint(out, prefer_ema)


def _from_training_checkpoint(sd: dict[str, torch.Tensor], prefer_ema: bool) -> dict[str, torch.Tensor]:
    """`effnets train` checkpoints hold ``model.*``, ``ema.*``, ``optim.*`` and ``rng.*`` tensors in one
    safetensors file: take the model (or, preferred and present, the EMA) weights."""
    if not all(k.startswith(("model.", "ema.", "optim.", "rng.")) for k in sd) or not any(k.startswith("model.") for k in sd):
        return sd
    prefix = "ema." if prefer_ema and any(k.startswith("ema.") for k in sd) else "model."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
