"""Train and eval preprocessing, from the model card (eval) and the recipe (train)."""
from __future__ import annotations

import math
import random

import torch
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from ..errors import ConfigError
from .augment import AutoAugment, RandAugment

INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                  "nearest": InterpolationMode.NEAREST}


def interpolation_mode(name: str) -> InterpolationMode:
    try:
        return INTERPOLATIONS[name]
    except KeyError:
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {name!r}") from None


def eval_transform(size: int, crop_pct: float = 0.875, interpolation: str = "bicubic",
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    """Resize the shorter side to ``floor(size / crop_pct)``, centre-crop ``size``, normalise:
    the standard ImageNet evaluation (crop_pct 0.875 at 224 -> resize 256)."""
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}")
    resize = int(math.floor(size / crop_pct))
    return T.Compose([T.Resize(resize, interpolation=interpolation_mode(interpolation)), T.CenterCrop(size),
                      T.Lambda(_to_rgb), T.ToTensor(), T.Normalize(mean, std)])


def eval_transform_from_card(card, size: int | None = None, crop_pct: float | None = None,
                             interpolation: str | None = None):
    return eval_transform(size or card.test_size, card.crop_pct if crop_pct is None else crop_pct,
                          interpolation or card.interpolation, card.mean, card.std)


def _to_rgb(img):
    return img.convert("RGB") if img.mode != "RGB" else img


class TrainTransform:
    """Random-resized crop (scale range), optional horizontal flip, RandAugment/AutoAugment,
    normalisation.  ``size`` and ``magnitude`` are attributes changed per progressive stage.

    Randomness: when an ``rng`` (random.Random) is given the whole pipeline draws from it, so a
    sample's augmentation depends only on (seed, epoch, index): resumable and independent of the
    number of loader workers."""

    def __init__(self, size: int, *, interpolation: str = "bicubic", mean=(0.485, 0.456, 0.406),
                 std=(0.229, 0.224, 0.225), scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: float = 0.5,
                 augment: str = "none", magnitude: float = 10.0, num_layers: int = 2):
        self.size = size
        self.interp = interpolation_mode(interpolation)
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        if augment == "randaugment":
            self.augment = RandAugment(num_layers, magnitude)
        elif augment == "autoaugment":
            self.augment = AutoAugment()
        elif augment in ("none", None):
            self.augment = None
        else:
            raise ConfigError(f"augment must be none, randaugment or autoaugment, got {augment!r}")
        self.normalize = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def set_magnitude(self, magnitude: float) -> None:
        if isinstance(self.augment, RandAugment):
            self.augment.magnitude = magnitude

    def _crop_box(self, w: int, h: int, rng: random.Random):
        area = w * h
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):  # Inception-style crop, as in the TF and torchvision pipelines
            target = area * rng.uniform(*self.scale)
            ar = math.exp(rng.uniform(*log_r))
            cw, ch = int(round(math.sqrt(target * ar))), int(round(math.sqrt(target / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
        s = min(w, h)
        return (h - s) // 2, (w - s) // 2, s, s

    def __call__(self, img, rng: random.Random | None = None) -> torch.Tensor:
        rng = rng or random.Random(random.getrandbits(64))
        img = _to_rgb(img)
        top, left, ch, cw = self._crop_box(*img.size, rng)
        img = T.functional.resized_crop(img, top, left, ch, cw, [self.size, self.size], self.interp)
        if self.hflip > 0 and rng.random() < self.hflip:
            img = T.functional.hflip(img)
        if self.augment is not None:
            img = self.augment(img, rng)
        return self.normalize(img)

    def __repr__(self) -> str:
        return (f"TrainTransform(size={self.size}, scale={self.scale}, hflip={self.hflip}, "
                f"augment={self.augment!r})")
