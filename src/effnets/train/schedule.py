"""Per-step learning-rate schedules: linear warm-up, then cosine or staircase exponential decay."""
from __future__ import annotations

import math

from ..errors import ConfigError


class LRSchedule:
    """lr(step) for a run of ``total_steps`` optimiser steps; ``step_to(opt, step)`` writes it to
    every parameter group.

    * warm-up: linear from ``warmup_lr`` to ``base_lr`` over ``warmup_steps``;
    * ``cosine``: ``min_lr + (base - min_lr) * (1 + cos(pi * t)) / 2`` with t the fraction of the
      post-warm-up steps done (ResNet-RS, TF2 model garden);
    * ``exponential``: ``base * decay_rate ** floor(step / decay_steps)``, counted from step 0 and
      replaced by the warm-up ramp while warming up - the EfficientNet TF code's
      ``build_learning_rate(..., 'exponential', decay_factor=0.97, decay_epochs=2.4)``;
    * ``constant``: ``base`` after warm-up.

    The schedule is a pure function of the step, so its state is just the step."""

    def __init__(self, kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 warmup_lr: float = 0.0, min_lr: float = 0.0, decay_rate: float = 0.97, decay_steps: float = 1.0):
        if kind not in ("cosine", "exponential", "constant"):
            raise ConfigError(f"schedule must be cosine, exponential or constant, got {kind!r}")
        self.kind, self.base_lr, self.total_steps = kind, base_lr, max(1, total_steps)
        self.warmup_steps, self.warmup_lr, self.min_lr = warmup_steps, warmup_lr, min_lr
        self.decay_rate, self.decay_steps = decay_rate, max(decay_steps, 1e-9)
        self.last_step = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.warmup_lr + (self.base_lr - self.warmup_lr) * step / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
        if self.kind == "exponential":
            return max(self.min_lr, self.base_lr * self.decay_rate ** math.floor(step / self.decay_steps))
        return self.base_lr

    def step_to(self, optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for g in optimizer.param_groups:  # layer-wise decay groups scale the common rate
            g["lr"] = lr * g.get("lr_scale", 1.0)
        self.last_step = step
        return lr

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])


def build_schedule(recipe, base_lr: float, steps_per_epoch: int) -> LRSchedule:
    total = int(math.ceil(recipe.epochs * steps_per_epoch))
    return LRSchedule(recipe.schedule, base_lr, total, warmup_steps=int(round(recipe.warmup_epochs * steps_per_epoch)),
                      warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, decay_rate=recipe.decay_rate,
                      decay_steps=recipe.decay_epochs * steps_per_epoch)
