"""Mixup, CutMix, label smoothing and the soft-target cross-entropy they need."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_targets(targets: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """Class indices (N,) or probabilities (N, K) -> smoothed probabilities (N, K):
    ``(1 - s) * t + s / K`` (Szegedy et al. 2016; TF ``label_smoothing`` in softmax CE)."""
    if targets.ndim == 1:
        targets = F.one_hot(targets, num_classes).float()
    else:
        targets = targets.float()
    if smoothing > 0:
        targets = targets * (1.0 - smoothing) + smoothing / num_classes
    return targets


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_k t_k log softmax(logits)_k."""
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


class MixUpCutMix:
    """Per-batch mixup (Zhang et al. 2018) or CutMix (Yun et al. 2019) on images and soft targets.

    With probability ``prob`` a batch is mixed; if both alphas are > 0, CutMix is chosen with
    probability ``switch_prob``.  lambda ~ Beta(alpha, alpha); the batch is mixed with its flip
    (``x.flip(0)``).  CutMix's lambda is corrected to the actual box area.  Randomness comes from the
    ``generator`` passed per call, so a step's mixing is reproducible.  ``mixup_alpha`` and
    ``cutmix_alpha`` are attributes, changed per progressive stage."""

    def __init__(self, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5):
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        if not self.active:
            return x, y
        u = torch.rand(3, generator=generator).tolist()
        if u[0] >= self.prob:
            return x, y
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or u[1] < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        # Beta(a, a) from two Gammas, drawn from the step's generator.
        ga = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
        lam = float(ga[0] / ga.sum())
        if use_cutmix:
            h, w = x.shape[-2:]
            cut = math.sqrt(1.0 - lam)
            ch, cw = int(h * cut), int(w * cut)
            c = torch.rand(2, generator=generator).tolist()
            cy, cx = int(c[0] * h), int(c[1] * w)
            y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
            x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
        else:
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, y * lam + y.flip(0) * (1.0 - lam)
