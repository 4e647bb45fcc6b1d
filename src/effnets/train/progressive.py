"""EfficientNetV2 progressive learning (Tan & Le 2021, arXiv 2104.00298, section 4 and Table 6).

Training is split into N equal stages.  In stage i (0-based) every setting moves linearly from
its first-stage to its last-stage value::

    value_i = first + (last - first) * i / (N - 1)

for the image size, the RandAugment magnitude, the mixup alpha and the dropout rate: small images
with weak regularisation first, large images with strong regularisation last.  It works with any
model (the size changes the data pipeline; dropout goes through ``model.set_regularization``).

Paper Table 6 versus the released code (google/automl ``efficientnetv2/effnetv2_configs.py`` and
``main.py``; see also docs/design reference-numbers section 2c):

=====================  ===============  ===============  ===============  ==============================
setting                paper S          paper M          paper L          automl S / M / L (XL)
=====================  ===============  ===============  ===============  ==============================
image size             128 -> 300       128 -> 380       128 -> 380       128 -> 300 / 384 / 384 (384)
RandAugment magnitude  5 -> 15          5 -> 20          5 -> 25          5 -> 10 / 15 / 20 (20)
mixup alpha            0 -> 0           0 -> 0.2         0 -> 0.4         0 / 0.2 / 0.5 (0.5) (+cutmix)
dropout                0.1 -> 0.3       0.1 -> 0.4       0.1 -> 0.5       fixed 0.2 / 0.3 / 0.4 (0.4)
stages                 4                4                4                4
=====================  ===============  ===============  ===============  ==============================

**Which we follow:** the paper's Table 6 (``PAPER_TABLE6``), because it is the method the paper
describes and evaluates - in particular the released code computes a dropout schedule and then
discards it (``del dp_list``).  To reproduce the released checkpoints instead, use ``AUTOML_CONFIG``
values, e.g. ``--set progressive.dropout=[0.2,0.2] --set progressive.randaug_magnitude=[5,10]``.
Sizes are rounded down to an integer as automl's ``int(ibase + (isize - ibase) * ratio)``.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

# Paper Table 6: (size min, size max), (RA min, max), (mixup min, max), (dropout min, max).
PAPER_TABLE6 = {
    "s": dict(image_size=(128, 300), randaug_magnitude=(5, 15), mixup_alpha=(0, 0), dropout=(0.1, 0.3)),
    "m": dict(image_size=(128, 380), randaug_magnitude=(5, 20), mixup_alpha=(0, 0.2), dropout=(0.1, 0.4)),
    "l": dict(image_size=(128, 380), randaug_magnitude=(5, 25), mixup_alpha=(0, 0.4), dropout=(0.1, 0.5)),
}
# google/automl efficientnetv2 configs (mixup alpha fixed, also used for cutmix; dropout fixed).
AUTOML_CONFIG = {
    "s": dict(image_size=(128, 300), randaug_magnitude=(5, 10), mixup_alpha=(0, 0), dropout=(0.2, 0.2)),
    "m": dict(image_size=(128, 384), randaug_magnitude=(5, 15), mixup_alpha=(0.2, 0.2), dropout=(0.3, 0.3)),
    "l": dict(image_size=(128, 384), randaug_magnitude=(5, 20), mixup_alpha=(0.5, 0.5), dropout=(0.4, 0.4)),
}


@dataclass(frozen=True)
class StageSettings:
    stage: int
    num_stages: int
    start_epoch: int
    end_epoch: int  # exclusive
    image_size: int
    randaug_magnitude: float
    mixup_alpha: float
    dropout: float

    def describe(self) -> str:
        return (f"stage {self.stage + 1}/{self.num_stages} (epochs {self.start_epoch + 1}-{self.end_epoch}): "
                f"image size {self.image_size}, RandAugment magnitude {self.randaug_magnitude:g}, "
                f"mixup alpha {self.mixup_alpha:g}, dropout {self.dropout:g}")


class ProgressiveSchedule:
    """N stages over ``epochs`` epochs (the last stage takes any remainder)."""

    def __init__(self, num_stages: int, epochs: int, image_size: tuple, randaug_magnitude: tuple,
                 mixup_alpha: tuple, dropout: tuple):
        if num_stages < 1:
            raise ConfigError(f"progressive learning needs >= 1 stage, got {num_stages}")
        if epochs < num_stages:
            raise ConfigError(f"progressive learning: {num_stages} stages need >= {num_stages} epochs, got {epochs}")
        for name, pair in (("image_size", image_size), ("randaug_magnitude", randaug_magnitude),
                           ("mixup_alpha", mixup_alpha), ("dropout", dropout)):
            if len(pair) != 2 or any(v is None or v < 0 for v in pair):
                raise ConfigError(f"progressive.{name} must be two values >= 0, got {pair}")
        if not all(0 <= d < 1 for d in dropout):
            raise ConfigError(f"progressive.dropout must be in [0, 1), got {dropout}")
        if min(image_size) < 8:
            raise ConfigError(f"progressive.image_size must be >= 8, got {image_size}")
        self.num_stages, self.epochs = num_stages, epochs
        self.image_size, self.randaug_magnitude = tuple(image_size), tuple(randaug_magnitude)
        self.mixup_alpha, self.dropout = tuple(mixup_alpha), tuple(dropout)
        self.epochs_per_stage = epochs // num_stages

    def _lerp(self, pair, i: int) -> float:
        r = i / (self.num_stages - 1) if self.num_stages > 1 else 1.0
        return pair[0] + (pair[1] - pair[0]) * r

    def stage(self, i: int) -> StageSettings:
        start = i * self.epochs_per_stage
        end = self.epochs if i == self.num_stages - 1 else start + self.epochs_per_stage
        return StageSettings(i, self.num_stages, start, end, int(self._lerp(self.image_size, i)),
                             round(self._lerp(self.randaug_magnitude, i), 6), round(self._lerp(self.mixup_alpha, i), 6),
                             round(self._lerp(self.dropout, i), 6))

    def stage_index(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_stage, self.num_stages - 1)

    def for_epoch(self, epoch: int) -> StageSettings:
        return self.stage(self.stage_index(epoch))

    def stages(self) -> list[StageSettings]:
        return [self.stage(i) for i in range(self.num_stages)]


def from_recipe(recipe, final_size: int, dropout: float) -> ProgressiveSchedule | None:
    """The recipe's schedule; ``null`` last-stage values take the run's own final settings."""
    p = recipe.progressive
    if p.stages <= 1:
        return None
    if recipe.epochs != int(recipe.epochs):
        raise ConfigError(f"progressive learning needs a whole number of epochs, got {recipe.epochs}")

    def pair(v, last):
        return (v[0], last if v[1] is None else v[1])
    return ProgressiveSchedule(p.stages, int(recipe.epochs), pair(p.image_size, final_size),
                               pair(p.randaug_magnitude, recipe.randaug_magnitude),
                               pair(p.mixup_alpha, recipe.mixup_alpha), pair(p.dropout, dropout))
