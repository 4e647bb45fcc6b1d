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

from ..errors import BadImage, ConfigError, DataError
from .images import DEFAULT_MAX_PIXELS, open_image, probe_image

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


def _load_image(path: str, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """RGB image or BadImage (see effnets.data.images.open_image)."""
    return open_image(path, max_pixels=max_pixels)


def _append_line(path: str, line: str) -> None:
    """One ``write`` on an O_APPEND descriptor: safe from several DataLoader worker processes."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def _candidates(top: str) -> list[str]:
    """Files with an image extension under ``top`` (recursive, sorted), plus directories and
    broken links named like images (they are reported as bad files, not silently ignored)."""
    out = []
    for dirpath, dirnames, files in os.walk(top):
        dirnames.sort()
        named_like_images = [d for d in dirnames if d.lower().endswith(IMG_EXTENSIONS)]
        dirnames[:] = [d for d in dirnames if d not in named_like_images]  # do not descend into them
        out += [os.path.join(dirpath, f) for f in files + named_like_images if f.lower().endswith(IMG_EXTENSIONS)]
    return sorted(out)


class FolderDataset(Dataset):
    """``root/<class>/<image>``, classes sorted by name (torchvision's ImageFolder layout).

    Classes are the sub-folder names, whatever they hold: an **empty class folder** (or one whose
    files are all bad) is still a class - it keeps its index, so train and val agree and a
    checkpoint's class list matches the folder names; the trainer reports classes without
    usable training images.  Pass the training set's ``classes`` to the val set: a val folder may
    lack a class or hold it empty, but may not add one.

    Bad files (see ``effnets.data.images``) never stop a run: the scan (``verify="header"``: header
    only, fast; ``"full"``: every image decoded once) drops the ones it finds into ``self.bad``;
    a file that fails later, when its pixels are decoded, is recorded (``self.late_bad``, and as a
    line in ``bad_log`` when set, so DataLoader workers report too) and then replaced by the next
    good sample in folder order (``on_error="substitute"``: a fixed choice, so runs stay
    reproducible and resumable) or dropped (``on_error="skip"``: the item is ``None``; use
    ``collate_skip_none``; for evaluation)."""

    def __init__(self, root: str, classes: list[str] | None = None, *, verify: str = "header",
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, on_error: str = "substitute",
                 bad_log: str | None = None):
        if not os.path.isdir(root):
            raise ConfigError(f"image folder {root!r} does not exist (expected {root}/<class>/<image>)")
        if verify not in ("header", "full"):
            raise ConfigError(f"verify must be header or full, got {verify!r}")
        if on_error not in ("substitute", "skip"):
            raise ConfigError(f"on_error must be substitute or skip, got {on_error!r}")
        self.root, self.max_pixels, self.on_error, self.bad_log = root, max_pixels, on_error, bad_log
        found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
        self.classes = list(classes) if classes else found
        if not self.classes:
            raise ConfigError(f"{root!r} has no class sub-folders (expected {root}/<class>/<image>)")
        unknown = set(found) - set(self.classes)
        if unknown:
            raise ConfigError(f"{root} has classes not in the training set: {', '.join(sorted(unknown))} "
                              f"(training classes: {', '.join(self.classes)})")
        index = {c: i for i, c in enumerate(self.classes)}
        check = open_image if verify == "full" else probe_image
        self.samples: list[tuple[str, int]] = []
        self.bad: list[tuple[str, str]] = []
        self.late_bad: dict[str, str] = {}
        for c in found:
            for path in _candidates(os.path.join(root, c)):
                try:
                    check(path, max_pixels=max_pixels)
                except BadImage as e:
                    self.bad.append((path, e.reason))
                    continue
                self.samples.append((path, index[c]))
        if not self.samples:
            what = f"; all {len(self.bad)} image files are bad, e.g. {self.bad[0][0]}: {self.bad[0][1]}" if self.bad else ""
            raise DataError(f"no usable images found under {root!r} (expected {root}/<class>/<image>){what}")
        self.targets = [t for _, t in self.samples]
        counts = np.bincount(self.targets, minlength=len(self.classes))
        self.empty_classes = [c for c, n in zip(self.classes, counts) if n == 0]

    def __len__(self) -> int:
        return len(self.samples)

    def _record(self, e: BadImage) -> None:
        if e.path not in self.late_bad:
            self.late_bad[e.path] = e.reason
            if self.bad_log:
                _append_line(self.bad_log, f"{e.path}\t{e.reason}\n")

    def __getitem__(self, i):
        path, t = self.samples[i]
        try:
            return open_image(path, self.max_pixels), t
        except BadImage as e:
            self._record(e)
        if self.on_error == "skip":
            return None
        n = len(self.samples)
        for k in range(1, min(n, 64)):
            path, t = self.samples[(i + k) % n]
            try:
                return open_image(path, self.max_pixels), t
            except BadImage as e:
                self._record(e)
        raise DataError(f"{self.root}: no readable image near sample {i}; the data set is mostly bad files")

    def bad_files(self) -> list[tuple[str, str]]:
        """Every bad file found so far: at the scan, when decoded here, and by worker processes."""
        seen = dict(self.bad)
        seen.update(self.late_bad)
        if self.bad_log and os.path.exists(self.bad_log):
            with open(self.bad_log, encoding="utf-8", errors="replace") as f:
                for line in f:
                    p, _, reason = line.rstrip("\n").partition("\t")
                    if p.startswith(os.path.join(self.root, "")):  # the log may be shared by train and val
                        seen.setdefault(p, reason)
        return sorted(seen.items())

    def num_files(self) -> int:
        return len(self.samples) + len(self.bad)


def check_bad_fraction(ds, limit: float | None, what: str) -> None:
    """DataError when more than ``limit`` of ``ds``'s image files are bad (``max_bad_fraction``)."""
    if limit is None or not hasattr(ds, "bad_files"):
        return
    bad = ds.bad_files()
    total = max(ds.num_files(), len(bad), 1)  # late bad files are among the samples
    frac = len(bad) / total
    if frac > limit:
        p, reason = bad[0]
        raise DataError(f"{what}: {len(bad)} of {total} image files ({frac:.1%}) are bad, over max_bad_fraction="
                        f"{limit:g} (e.g. {p}: {reason}); fix or remove them, or allow more with "
                        f"--set max_bad_fraction={min(1.0, round(frac + 0.05, 2)):g}")


def collate_skip_none(batch):
    """default_collate without the ``None`` items of skipped bad files; ``None`` if all were."""
    from torch.utils.data import default_collate
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


class UnlabeledFolder(Dataset):
    """Every image under ``root`` (recursively), for teacher pseudo-labelling.  Each image is
    decoded once at the scan; bad files are skipped and listed in ``self.bad``."""

    def __init__(self, root: str, transform=None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        if not os.path.isdir(root):
            raise ConfigError(f"unlabelled image folder {root!r} does not exist")
        self.paths, self.bad = [], []
        for path in _candidates(root):
            try:
                open_image(path, max_pixels)
            except BadImage as e:
                self.bad.append((path, e.reason))
                continue
            self.paths.append(path)
        if not self.paths:
            raise DataError(f"no usable images found under {root!r}" + (f" ({len(self.bad)} bad files)" if self.bad else ""))
        self.transform, self.max_pixels = transform, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        img = _load_image(self.paths[i], self.max_pixels)
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
                 image_size: int = 32, verify: str = "header", max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 max_bad_fraction: float | None = None, bad_log: str | None = None) -> DataSplits:
    """``data``: ``digits``, ``synthetic`` or a directory holding ``train/`` and ``val/``.  For
    folders, bad image files are skipped (see FolderDataset) and ``max_bad_fraction`` (per split)
    turns too many of them into a DataError."""
    if data == "digits":
        return DataSplits(DigitsDataset("train"), DigitsDataset("val"), DigitsDataset.classes)
    if data == "synthetic":
        tr = SyntheticDataset(synthetic_samples, synthetic_classes, image_size, seed=0)
        va = SyntheticDataset(max(synthetic_samples // 4, synthetic_classes), synthetic_classes, image_size, seed=1)
        return DataSplits(tr, va, tr.classes)
    if not os.path.isdir(data):
        what = "is not a directory" if os.path.exists(data) else "does not exist"
        raise ConfigError(f"data folder {data!r} {what}; --data must be digits, synthetic or a directory with "
                          "train/<class>/<image> and val/<class>/<image>")
    tdir, vdir = os.path.join(data, "train"), os.path.join(data, "val")
    if not os.path.isdir(tdir) or not os.path.isdir(vdir):
        raise ConfigError(f"{data!r} must contain train/ and val/ sub-folders (ImageFolder layout: "
                          f"{data}/train/<class>/<image>, {data}/val/<class>/<image>)")
    kw = dict(verify=verify, max_pixels=max_pixels, bad_log=bad_log)
    tr = FolderDataset(tdir, **kw)
    check_bad_fraction(tr, max_bad_fraction, f"training set {tdir}")
    va = FolderDataset(vdir, classes=tr.classes, on_error="skip", **kw)
    check_bad_fraction(va, max_bad_fraction, f"validation set {vdir}")
    return DataSplits(tr, va, tr.classes)


def build_eval_set(data: str, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                   max_bad_fraction: float | None = None, classes: list[str] | None = None) -> Dataset:
    """The validation split of ``data`` (for ``effnets eval``); bad files are skipped (items are
    ``None``: batch with ``collate_skip_none``)."""
    if data in ("digits", "synthetic"):
        return build_splits(data).val
    if not os.path.isdir(data):
        what = "is not a directory" if os.path.exists(data) else "does not exist"
        raise ConfigError(f"data folder {data!r} {what}; --data must be digits, synthetic or an image folder "
                          "(<class>/<image>, or one with val/<class>/<image>)")
    folder = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
    if classes is None and folder != data and os.path.isdir(os.path.join(data, "train")):
        classes = sorted(e.name for e in os.scandir(os.path.join(data, "train"))
                         if e.is_dir() and not e.name.startswith("."))
    ds = FolderDataset(folder, classes=classes or None, max_pixels=max_pixels, on_error="skip")
    check_bad_fraction(ds, max_bad_fraction, f"evaluation set {folder}")
    return ds


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
        item = self.base[i]
        if item is None:  # a bad file skipped by an evaluation set (see collate_skip_none)
            return None
        img, t = item
        if self.seeded:
            x = self.transform(img, sample_rng(self.seed, self.epoch, i))
        else:
            x = self.transform(img)
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(t, dtype=torch.long)
        return x, t
