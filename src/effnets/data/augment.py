"""RandAugment and AutoAugment with TensorFlow magnitude semantics, on PIL images.

Magnitude semantics (as in tensorflow/tpu ``models/official/efficientnet/autoaugment.py`` and
google/automl ``efficientnetv2/autoaugment.py``, which we re-implement, not copy):

* a magnitude ``m`` is on a scale where **10 is the op's "maximum"** (``_MAX_LEVEL = 10``), and it
  is *not* clipped: EfficientNetV2 uses m = 15 or 20, i.e. 1.5x / 2x the nominal maximum;
* geometric ops take a random sign: rotate ``30 * m/10`` degrees, shear ``0.3 * m/10``,
  translate ``0.45 * m/10`` of the image side (TF: 100 px at 224 ~ 0.45 of the side);
* enhance ops (color, contrast, brightness, sharpness) use factor ``1.8 * m/10 + 0.1``;
* posterize keeps ``8 - int(4 * m/10)`` bits, so a larger magnitude is stronger.  TF keeps
  ``int(4 * m/10)`` bits, which turns m=0 into a black image (a known quirk we do not follow);
  solarize uses
  threshold ``256 * m/10``, solarize-add adds ``110 * m/10`` below 128, cutout a square of side
  ``2 * 40 * m/10`` px at 224 (scaled to the image).
* RandAugment picks ``num_layers`` ops uniformly and applies each with probability drawn from
  U(0.2, 0.8), as ``distort_image_with_randaugment`` does.

torchvision's ``RandAugment`` is different: its magnitude indexes ``num_magnitude_bins`` (31) bins
spanning each op's range, so torchvision m=9 is TF m=3; do not mix the two scales.
"""
from __future__ import annotations

import random

from PIL import Image, ImageEnhance, ImageOps

MAX_LEVEL = 10.0
FILL = (128, 128, 128)  # TF fills with grey (replace value 128)


def _signed(v: float, rng: random.Random) -> float:
    return -v if rng.random() < 0.5 else v


def _affine(img, matrix):
    return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=FILL)


def _rotate(img, m, rng):
    return img.rotate(_signed(30.0 * m / MAX_LEVEL, rng), resample=Image.BILINEAR, fillcolor=FILL)


def _shear_x(img, m, rng):
    return _affine(img, (1, _signed(0.3 * m / MAX_LEVEL, rng), 0, 0, 1, 0))


def _shear_y(img, m, rng):
    return _affine(img, (1, 0, 0, _signed(0.3 * m / MAX_LEVEL, rng), 1, 0))


def _translate_x(img, m, rng):
    return _affine(img, (1, 0, _signed(0.45 * m / MAX_LEVEL, rng) * img.size[0], 0, 1, 0))


def _translate_y(img, m, rng):
    return _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * m / MAX_LEVEL, rng) * img.size[1]))


def _enhance(cls):
    def op(img, m, rng):
        return cls(img).enhance(1.8 * m / MAX_LEVEL + 0.1)
    return op


def _posterize(img, m, rng):
    return ImageOps.posterize(img, min(8, max(1, 8 - int(4 * m / MAX_LEVEL))))


def _solarize(img, m, rng):
    return ImageOps.solarize(img, int(256 * m / MAX_LEVEL))


def _solarize_add(img, m, rng):
    add = int(110 * m / MAX_LEVEL)
    lut = [min(255, i + add) if i < 128 else i for i in range(256)] * len(img.getbands())
    return img.point(lut)


def _cutout(img, m, rng):
    w, h = img.size
    half = int(40 * m / MAX_LEVEL * min(w, h) / 224)
    if half <= 0:
        return img
    cx, cy = rng.randrange(w), rng.randrange(h)
    img = img.copy()
    img.paste(FILL, (max(0, cx - half), max(0, cy - half), min(w, cx + half), min(h, cy + half)))
    return img


OPS = {
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Brightness": _enhance(ImageEnhance.Brightness),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
    "Cutout": _cutout,
}

# The op list of tensorflow/tpu autoaugment.py::distort_image_with_randaugment.
RANDAUGMENT_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color",
                   "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY",
                   "Cutout", "SolarizeAdd")

# AutoAugment "v0" policy used by the EfficientNet code (tensorflow/tpu autoaugment.py::policy_v0):
# 25 sub-policies of two (op, probability, magnitude) steps.  It is not the AutoAugment paper's
# ImageNet policy that torchvision implements.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)), (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


class RandAugment:
    """``num_layers`` random ops at magnitude ``magnitude`` (TF scale, see module docstring).
    ``magnitude`` is a plain attribute so progressive learning can change it between stages."""

    def __init__(self, num_layers: int = 2, magnitude: float = 10.0):
        self.num_layers = num_layers
        self.magnitude = magnitude

    def __call__(self, img, rng: random.Random | None = None):
        rng = rng or random
        mode = img.mode
        img = img.convert("RGB")
        for _ in range(self.num_layers):
            name = rng.choice(RANDAUGMENT_OPS)
            if rng.random() < rng.uniform(0.2, 0.8):
                img = OPS[name](img, self.magnitude, rng)
        return img.convert(mode) if mode != "RGB" else img

    def __repr__(self) -> str:
        return f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude:g}, TF scale)"


class AutoAugment:
    """EfficientNet's AutoAugment: one random sub-policy of POLICY_V0 per image."""

    def __init__(self, policy=POLICY_V0):
        self.policy = policy

    def __call__(self, img, rng: random.Random | None = None):
        rng = rng or random
        mode = img.mode
        img = img.convert("RGB")
        for name, prob, mag in rng.choice(self.policy):
            if rng.random() < prob:
                img = OPS[name](img, mag, rng)
        return img.convert(mode) if mode != "RGB" else img

    def __repr__(self) -> str:
        return "AutoAugment(policy=v0)"
