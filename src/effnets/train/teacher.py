"""Teacher training (ResNet-RS section 3.3; Noisy Student, Xie et al. 2020): a trained teacher
labels an unlabelled image folder, and the student trains on labelled plus pseudo-labelled images.

* ``hard`` pseudo-labels: the teacher's top class, as a one-hot target;
* ``soft``: the teacher's full softmax distribution (Noisy Student found soft labels slightly
  better for out-of-domain unlabelled data).
Images whose top teacher probability is below ``threshold`` are dropped (Noisy Student uses 0.3).
The teacher sees clean images with its model card's evaluation preprocessing; the student sees
them through the recipe's (noisy) training augmentation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..data.datasets import UnlabeledFolder, _load_image
from ..errors import ConfigError


class SoftLabeled(Dataset):
    """Targets of a labelled data set as one-hot float vectors, to concatenate with soft ones."""

    def __init__(self, base: Dataset, num_classes: int):
        self.base, self.num_classes = base, num_classes

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        img, t = self.base[i]
        return img, F.one_hot(torch.tensor(int(t)), self.num_classes).float()


class PseudoLabeled(Dataset):
    def __init__(self, paths: list[str], targets: torch.Tensor):
        self.paths, self.targets = paths, targets

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        return _load_image(self.paths[i]), self.targets[i]


@torch.no_grad()
def pseudo_label(teacher: torch.nn.Module, folder: str, transform, *, num_classes: int, mode: str = "soft",
                 threshold: float = 0.0, batch_size: int = 64, device="cpu", workers: int = 0) -> PseudoLabeled:
    if mode not in ("hard", "soft"):
        raise ConfigError(f"pseudo-labels must be hard or soft, got {mode!r}")
    ds = UnlabeledFolder(folder, transform)
    teacher = teacher.to(device).eval()
    probs = []
    for x in DataLoader(ds, batch_size=batch_size, num_workers=workers):
        logits = teacher(x.to(device))
        if logits.shape[-1] != num_classes:
            raise ConfigError(f"teacher predicts {logits.shape[-1]} classes, the data set has {num_classes}")
        probs.append(F.softmax(logits.float(), dim=-1).cpu())
    p = torch.cat(probs)
    keep = p.max(dim=-1).values >= threshold
    p = p[keep]
    if mode == "hard":
        p = F.one_hot(p.argmax(dim=-1), num_classes).float()
    paths = [q for q, k in zip(ds.paths, keep.tolist()) if k]
    return PseudoLabeled(paths, p)
