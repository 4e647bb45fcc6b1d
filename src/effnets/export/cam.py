"""Grad-CAM (Selvaraju et al. 2017, arXiv 1610.02391): the class activation map the EfficientNet
paper shows in Fig. 7 to compare where scaled models look.

cam = ReLU(sum_c alpha_c A_c), alpha_c = mean over positions of d y_class / d A_c, where A is the
last feature map (``forward_features``: the head conv of a convnet, the last stage of CoAtNet,
the patch tokens of ViT reshaped to their grid).  Upsampled to the input and normalised to [0, 1].
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers.attention import fused_attention


def grad_cam(model: nn.Module, x: torch.Tensor, class_idx: int | None = None) -> np.ndarray:
    """(H, W) map in [0, 1] for the first image of ``x`` and ``class_idx`` (default: top class)."""
    model.eval()
    x = x[:1]
    with torch.enable_grad(), fused_attention(False):
        feats = model.forward_features(x)
        feats.retain_grad()
        logits = model.forward_head(feats)
        if class_idx is None:
            class_idx = int(logits[0].argmax())
        model.zero_grad(set_to_none=True)
        logits[0, class_idx].backward()
    a, g = feats.detach(), feats.grad.detach()
    if a.ndim == 3:  # ViT tokens (B, prefix + N, D) -> (B, D, h, w)
        k = getattr(model, "num_prefix_tokens", 1)
        p = model.patch
        h, w = x.shape[-2] // p, x.shape[-1] // p
        a = a[:, k:].transpose(1, 2).reshape(1, -1, h, w)
        g = g[:, k:].transpose(1, 2).reshape(1, -1, h, w)
    weights = g.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam - cam.min()
    m = cam.max()
    return (cam / m if m > 0 else cam).numpy()


def _jet(v: np.ndarray) -> np.ndarray:
    """Jet-like colour map: [0, 1] -> RGB in [0, 1] (piecewise linear, blue -> red)."""
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return np.stack([r, g, b], axis=-1)


def overlay(img, heat: np.ndarray, alpha: float = 0.5):
    """Blend the heat map (resized to the image) over an RGB PIL image."""
    from PIL import Image

    base = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if heat.shape != base.shape[:2]:
        hm = Image.fromarray((heat * 255).astype(np.uint8)).resize(img.size, Image.BILINEAR)
        heat = np.asarray(hm, dtype=np.float32) / 255.0
    out = (1 - alpha) * base + alpha * _jet(heat)
    return Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")


def save_overlay(img, heat: np.ndarray, path: str | os.PathLike, title: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = overlay(img, heat)
    from PIL import PngImagePlugin
    meta = PngImagePlugin.PngInfo()
    if title:
        meta.add_text("Description", f"Grad-CAM for class {title}")
    im.save(path, pnginfo=meta)
    return path
