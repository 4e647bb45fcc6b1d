"""Classify image files with a model card's (or weight folder's) preprocessing.

Any image PIL reads works: grayscale, RGBA / LA / palette with transparency (composited on
white), CMYK, 16-bit and 32-bit integer or float greyscale (rescaled to 8 bits by the format's
range), EXIF orientation applied.  Unreadable files are reported and skipped.

Class names: the model's ``labels`` (from its weight folder), else the ImageNet-1k names when the
model has 1000 classes (``imagenet_classes.txt``, written from torchvision's
``torchvision.models._meta._IMAGENET_CATEGORIES``), else ``class_<i>``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import nn

from ..layers.attention import fused_attention
from ..weights.folder import preprocessing_of

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                  ".jfif", ".ico", ".tga"}


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    p = Path(__file__).with_name("imagenet_classes.txt")
    try:
        names = tuple(line.strip() for line in p.read_text().splitlines() if line.strip())
    except OSError:
        names = ()
    return names if len(names) == 1000 else tuple(f"class_{i}" for i in range(1000))


def class_names(model: nn.Module) -> list[str]:
    n = int(getattr(model, "num_classes", 0))
    labels = getattr(model, "labels", None)
    if labels and len(labels) == n:
        return list(labels)
    if n == 1000:
        return list(imagenet_classes())
    return [f"class_{i}" for i in range(n)]


def load_image(path: str | os.PathLike):
    """An 8-bit RGB PIL image from any image file (EXIF rotation, alpha on white, CMYK, palette,
    16-bit, float); raises ``BadImage`` naming the file and the problem.  The one opener shared
    with training and evaluation: ``effnets.data.images.open_image``."""
    from ..data.images import open_image
    return open_image(path)


def preprocess(img, pre: dict) -> tuple[torch.Tensor, "object"]:
    """Resize the short side to size / crop_pct, centre-crop ``size`` (timm / torchvision eval
    transform), scale to [0, 1], normalise.  Returns (1, 3, S, S) tensor and the cropped image."""
    from PIL import Image

    size = int(pre.get("input_size", 224))
    crop = float(pre.get("crop_pct", 0.875) or 1.0)
    interp = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
              "lanczos": Image.LANCZOS}.get(pre.get("interpolation", "bicubic"), Image.BICUBIC)
    scale_size = int(size / crop)
    w, h = img.size
    if w <= h:
        nw, nh = scale_size, max(1, round(h * scale_size / w))
    else:
        nw, nh = max(1, round(w * scale_size / h)), scale_size
    img = img.resize((nw, nh), interp)
    left, top = (nw - size) // 2, (nh - size) // 2
    img = img.crop((left, top, left + size, top + size))
    a = np.asarray(img, dtype=np.float32) / 255.0
    mean = np.asarray(pre.get("mean", (0.485, 0.456, 0.406)), dtype=np.float32)
    std = np.asarray(pre.get("std", (0.229, 0.224, 0.225)), dtype=np.float32)
    a = (a - mean) / std
    return torch.from_numpy(a.transpose(2, 0, 1).copy()).unsqueeze(0), img


def list_images(target: str | os.PathLike) -> list[Path]:
    p = Path(target)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    return [p]


@dataclass
class Prediction:
    file: str
    top: list[dict] = field(default_factory=list)
    error: str | None = None
    cam: str | None = None

    def as_dict(self) -> dict:
        d = {"file": self.file}
        if self.error is not None:
            d["error"] = self.error
        else:
            d["top"] = self.top
        if self.cam:
            d["cam"] = self.cam
        return d


def predict_files(model: nn.Module, files: Iterable[str | os.PathLike], topk: int = 5,
                  cam_dir: str | os.PathLike | None = None) -> list[Prediction]:
    """Top-k (label, probability) per file; files that cannot be read get ``error`` set."""
    pre = preprocessing_of(model)
    names = class_names(model)
    k = max(1, min(int(topk), len(names) or 1))
    model.eval()
    out = []
    for f in files:
        f = Path(f)
        try:
            img = load_image(f)
        except Exception as e:  # PIL raises many types for bad files
            out.append(Prediction(str(f), error=f"unreadable image ({type(e).__name__}: {e})"))
            continue
        x, shown = preprocess(img, pre)
        with torch.no_grad(), fused_attention(False):
            probs = model(x).float().softmax(-1)[0]
        p, idx = probs.topk(k)
        pred = Prediction(str(f), top=[{"index": int(i), "label": names[int(i)], "prob": float(v)}
                                       for v, i in zip(p, idx)])
        if cam_dir is not None:
            from .cam import grad_cam, save_overlay
            heat = grad_cam(model, x, int(idx[0]))
            dst = Path(cam_dir) / f"{f.stem}_cam.png"
            if any(q.cam == str(dst) for q in out):  # same stem, other suffix
                dst = Path(cam_dir) / f"{f.stem}_{f.suffix.lstrip('.')}_cam.png"
            save_overlay(shown, heat, dst, title=pred.top[0]["label"])
            pred.cam = str(dst)
        out.append(pred)
    return out


def format_prediction(p: Prediction) -> str:
    if p.error is not None:
        return f"{p.file}: skipped: {p.error}"
    body = ", ".join(f"{t['label']} {t['prob']:.3f}" for t in p.top)
    return f"{p.file}: {body}" + (f"  [cam {p.cam}]" if p.cam else "")
