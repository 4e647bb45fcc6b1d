"""Checkpoints: one safetensors file per checkpoint, holding the weights (``model.*``), the EMA
weights (``ema.*``), the optimiser's tensors (``optim.*``) and the RNG states (``rng.*``); every
non-tensor piece (optimiser hyper-parameters, schedule, EMA counter, epoch/step - the data order -,
history, recipe) is JSON in the file's metadata.  No pickle anywhere: loading runs no code.

Writes are atomic: the bytes go to a temporary file in the same directory, are fsync'ed, and then
``os.replace``-d over the target, so a crash leaves either the old or the new file, never a
truncated one.  A failed write (disk full, ...) removes its temporary file and leaves the
previous checkpoint untouched.

Testing hook (not for normal use): ``EFFNETS_TEST_CHECKPOINT_PAUSE=<seconds>`` makes every
checkpoint write stop half-way - half the bytes written to the temporary file and fsync'ed -,
print ``effnets-test: checkpoint write paused ...`` to stderr and sleep, so a test can SIGKILL
the process in the middle of a write.

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only (plain weights;
resuming needs a safetensors training checkpoint), so no checkpoint can run code."""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..errors import CheckpointError

META_KEY = "effnets_train_state"


def atomic_write_bytes(path: str, data: bytes) -> None:
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            pause = os.environ.get("EFFNETS_TEST_CHECKPOINT_PAUSE")
            if pause and path.endswith(".safetensors"):
                half = len(data) // 2
                f.write(data[:half])
                f.flush()
                os.fsync(f.fileno())
                sys.stderr.write(f"effnets-test: checkpoint write paused at {half}/{len(data)} bytes: {tmp}\n")
                sys.stderr.flush()
                time.sleep(float(pause))
                f.write(data[half:])
            else:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _rng_state() -> tuple[dict, dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    npst = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(npst[1], dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [npst[0], int(npst[2]), int(npst[3]), float(npst[4])], "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["rng.numpy"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def _split_optimizer(sd: dict) -> tuple[dict, dict]:
    tensors, state_meta = {}, {}
    for pid, st in sd["state"].items():
        m = {}
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v
            else:
                m[name] = v
        state_meta[str(pid)] = m
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def _join_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {int(pid): dict(m) for pid, m in meta["state"].items()}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(path: str, model, *, ema=None, optimizer=None, schedule=None, meta: dict | None = None,
                    rng: bool = True) -> None:
    """Write the training state atomically.  ``model`` is the unwrapped module."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    info: dict = {"meta": meta or {}}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.module.state_dict().items()})
        info["ema"] = ema.state_dict()
    if optimizer is not None:
        t, m = _split_optimizer(optimizer.state_dict())
        tensors.update(t)
        info["optimizer"] = m
    if schedule is not None:
        info["schedule"] = schedule.state_dict()
    if rng:
        t, m = _rng_state()
        tensors.update(t)
        info["rng"] = m
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    data = st_save(tensors, metadata={META_KEY: json.dumps(info), "format": "pt"})
    atomic_write_bytes(path, data)


def read_checkpoint(path: str) -> tuple[dict, dict]:
    """(tensors, info) of a file written by save_checkpoint, or of plain weights (then info is
    empty): safetensors, or ``.pt/.pth/.bin/.ckpt`` read with ``weights_only=True``."""
    if not os.path.isfile(path):
        what = "is a directory, not a checkpoint file" if os.path.isdir(path) else "does not exist"
        raise CheckpointError(f"checkpoint {path!r} {what}")
    if path.lower().endswith((".pt", ".pth", ".bin", ".ckpt")):
        from pathlib import Path

        from ..weights.io import _read_file, _unwrap
        return _unwrap(_read_file(Path(path)), False), {}
    try:
        with open(path, "rb") as f:
            data = f.read()
        tensors = st_load(data)
        n = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + n])
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    md = header.get("__metadata__") or {}
    try:
        info = json.loads(md[META_KEY]) if META_KEY in md else {}
        if not isinstance(info, dict):
            raise ValueError(f"the training state is a {type(info).__name__}, not a mapping")
    except ValueError as e:
        raise CheckpointError(f"{path} has unreadable training metadata ({e})") from None
    return tensors, info


def model_state(tensors: dict, ema: bool = False, path: str = "checkpoint") -> dict:
    """The (raw or EMA) model weights from a checkpoint's tensors; plain weight files pass through."""
    prefix = "ema." if ema else "model."
    if any(k.startswith("model.") for k in tensors):
        sd = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointError(f"{path} holds no EMA weights (trained without EMA); drop --ema")
        return sd
    if ema:
        raise CheckpointError(f"{path} is a plain weights file without EMA weights; drop --ema")
    return dict(tensors)


def mismatch_report(model, sd: dict, limit: int = 8) -> str:
    """``missing keys: ... | unexpected keys: ... | mismatched shapes: ...`` between a model and a
    state dict (one line), or "" when they fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in sd
             if k in own and hasattr(sd[k], "shape") and tuple(sd[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mismatched shapes", wrong)):
        if items:
            more = f" ... (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} ({len(items)}): {', '.join(items[:limit])}{more}")
    return " | ".join(parts)


def load_model_state(model, sd: dict, path: str, what: str = "this model") -> None:
    """``load_state_dict`` that fails with one CheckpointError line listing every misfit."""
    report = mismatch_report(model, sd)
    if report:
        raise CheckpointError(f"{path} does not fit {what}: {report}; nothing was loaded")
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {what}: {str(e).splitlines()[0]}") from None


def restore(path: str, model, *, ema=None, optimizer=None, schedule=None, rng: bool = True) -> dict:
    """Load everything save_checkpoint wrote into live objects; returns the ``meta`` dict."""
    tensors, info = read_checkpoint(path)
    if not info:
        raise CheckpointError(f"{path} is a weights file, not a training checkpoint; it cannot be resumed")
    load_model_state(model, model_state(tensors, False, path), path, "this model/recipe")
    try:
        if ema is not None:
            if "ema" not in info:
                raise CheckpointError(f"{path} was saved without EMA but the recipe uses EMA")
            load_model_state(ema.module, model_state(tensors, True, path), path, "this model/recipe (EMA)")
            ema.load_state_dict(info["ema"])
        if optimizer is not None:
            optimizer.load_state_dict(_join_optimizer(tensors, info["optimizer"]))
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} does not fit this model/recipe: {str(e).splitlines()[0]}") from None
    if schedule is not None and "schedule" in info:
        schedule.load_state_dict(info["schedule"])
    if rng and "rng" in info:
        _set_rng_state(tensors, info["rng"])
    return info.get("meta", {})
