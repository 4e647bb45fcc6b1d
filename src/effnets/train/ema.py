"""Exponential moving average of the weights, BN running statistics included."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A shadow copy updated after every optimiser step:

        shadow <- d * shadow + (1 - d) * value,   d = min(decay, (1 + n) / (10 + n))

    for every parameter *and* floating-point buffer (BN running mean/var), as TF's
    ``ExponentialMovingAverage(decay, num_updates=global_step)`` applied to trainable and moving-
    average variables in the EfficientNet code.  The ``(1+n)/(10+n)`` warm-up (``warmup=True``) lets
    the average follow the fast-moving early weights.  Integer buffers are copied."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.num_updates = decay, warmup, 0

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = _unwrap(model).state_dict()
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if v.dtype.is_floating_point:
                v.mul_(d).add_(s.to(v.dtype), alpha=1.0 - d)
            else:
                v.copy_(s)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.num_updates = int(state["num_updates"])


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
