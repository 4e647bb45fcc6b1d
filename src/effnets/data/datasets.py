"""Built-in data sets (``digits``, ``synthetic``), ImageFolder directories, and the wrapper that
makes per-sample augmentation deterministic in (seed, epoch, index)."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


class DigitsDataset(Dataset):
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 16 grey levels, 10 classes;
    UCI "Optical Recognition of Handwritten Digits", test part), as greyscale PIL images upsampled
    to ``size`` (bicubic).  The split is deterministic and stratified: within each class, every
    5th image (by index) goes to ``val`` (355 images), the rest to ``train`` (1442)."""

    classes = [str(i) for i in range(10)]

    def __init__(self, split: str = "train", size: int = 32):
        if split not in ("train", "val"):
            raise ConfigError(f"digits split must be train or val, got {split!r}")
        try:
            from sklearn.datasets import load_digits
        except ImportError:  # pragma: no cover - scikit-learn is a dependency
            raise ConfigError("the digits data set needs scikit-learn: pip install scikit-learn") from None
        d = load_digits()
        images, labels = d.images, d.target
        keep = []
        for c in range(10):
            idx = np.flatnonzero(labels == c)
            keep += [i for k, i in enumerate(idx) if (k % 5 == 4) == (split == "val")]
        keep.sort()
        self.targets = [int(labels[i]) for i in keep]
        self.images = [Image.fromarray((images[i] * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
                       .resize((size, size), Image.BICUBIC) for i in keep]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class SyntheticDataset(Dataset):
    """Deterministic, learnable fake images for tests and benchmarks: class ``c`` is a noisy
    image whose mean colour and a bright square's position depend on ``c``."""

    def __init__(self, num_samples: int = 512, num_classes: int = 10, size: int = 32, seed: int = 0):
        self.num_samples, self.num_classes, self.size, self.seed = num_samples, num_classes, size, seed
        self.classes = [f"class_{i}" for i in range(num_classes)]
        self.targets = [i % num_classes for i in range(num_samples)]

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i):
        c = self.targets[i]
        g = np.random.default_rng((self.seed, i))
        base = np.array([(37 * c) % 256, (91 * c) % 256, (173 * c) % 256], dtype=np.float32)
        img = base + g.normal(0, 40, (self.size, self.size, 3))
        q = max(1, self.size // 4)
        y, x = divmod(c % 9, 3)
        img[y * q + q // 2:(y + 1) * q + q // 2, x * q + q // 2:(x + 1) * q + q // 2] = 255
        return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB"), c


def _load_image(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read image {path}: {e}") from None


class FolderDataset(Dataset):
    """``root/<class>/<image>``, classes sorted by name (torchvision's ImageFolder layout)."""

    def __init__(self, root: str, classes: list[str] | None = None):
        if not os.path.isdir(root):
            raise ConfigError(f"image folder {root!r} does not exist")
        found = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.classes = classes or found
        unknown = set(found) - set(self.classes)
        if unknown:
            raise ConfigError(f"{root} has classes not in the training set: {', '.join(sorted(unknown))}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for c in found:
            for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
                self.samples += [(os.path.join(dirpath, f), index[c]) for f in sorted(files)
                                 if f.lower().endswith(IMG_EXTENSIONS)]
        if not self.samples:
            raise ConfigError(f"no images found under {root!r} (expected {root}/<class>/<image>)")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, t = self.samples[i]
        return _load_image(path), t


class UnlabeledFolder(Dataset):
    """Every image under ``root`` (recursively), for teacher pseudo-labelling."""

    def __init__(self, root: str, transform=None):
        if not os.path.isdir(root):
            raise ConfigError(f"unlabelled image folder {root!r} does not exist")
        self.paths = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
                            if f.lower().endswith(IMG_EXTENSIONS))
        if not self.paths:
            raise ConfigError(f"no images found under {root!r}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        img = _load_image(self.paths[i])
        return self.transform(img) if self.transform else img


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def build_splits(data: str, *, synthetic_samples: int = 512, synthetic_classes: int = 10,
                 image_size: int = 32) -> DataSplits:
    """``data``: ``digits``, ``synthetic`` or a directory holding ``train/`` and ``val/``."""
    if data == "digits":
        return DataSplits(DigitsDataset("train"), DigitsDataset("val"), DigitsDataset.classes)
    if data == "synthetic":
        tr = SyntheticDataset(synthetic_samples, synthetic_classes, image_size, seed=0)
        va = SyntheticDataset(max(synthetic_samples // 4, synthetic_classes), synthetic_classes, image_size, seed=1)
        return DataSplits(tr, va, tr.classes)
    if not os.path.isdir(data):
        raise ConfigError(f"--data must be digits, synthetic or a directory with train/ and val/; got {data!r}")
    tdir, vdir = os.path.join(data, "train"), os.path.join(data, "val")
    if not os.path.isdir(tdir) or not os.path.isdir(vdir):
        raise ConfigError(f"{data!r} must contain train/ and val/ sub-folders (ImageFolder layout)")
    tr = FolderDataset(tdir)
    return DataSplits(tr, FolderDataset(vdir, classes=tr.classes), tr.classes)


def build_eval_set(data: str) -> Dataset:
    """The validation split of ``data`` (for ``effnets eval``)."""
    if data in ("digits", "synthetic") or os.path.isdir(os.path.join(data, "val")):
        return build_splits(data).val
    if os.path.isdir(data):
        return FolderDataset(data)
    raise ConfigError(f"--data must be digits, synthetic or an image folder; got {data!r}")


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random source of one sample's augmentation in one epoch."""
    return random.Random(hash((seed, epoch, index)) & 0xFFFFFFFFFFFF)


class Transformed(Dataset):
    """Applies a transform; train transforms get a per-(seed, epoch, index) RNG so that a sample's
    augmentation never depends on worker count or on where a resumed run restarted.  Targets are
    returned as given (int class or a soft-label tensor)."""

    def __init__(self, base: Dataset, transform, seed: int = 0, seeded: bool = False):
        self.base, self.transform, self.seed, self.seeded = base, transform, seed, seeded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        img, t = self.base[i]
        if self.seeded:
            x = self.transform(img, sample_rng(self.seed, self.epoch, i))
        else:
            x = self.transform(img)
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.long)
        return x, t
