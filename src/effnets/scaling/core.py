"""Scaling rules: channel and repeat rounding, ``scale()``, and compound scaling.

The rounding follows the reference TF code (tensorflow/tpu efficientnet_model.py
``round_filters`` / ``round_repeats``; google/automl efficientnetv2 ``round_filters``):
channels round to the nearest multiple of the divisor but never below the divisor, and with
the 10% rule never more than 10% below the unrounded value; repeats round up.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..spec import BlockSpec, HeadSpec, NetSpec, StageSpec, StemSpec


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` (nearest, ties up), at least ``min_value``
    (default: the divisor); with ``round_limit`` > 0 add one divisor if rounding went more than
    (1 - round_limit) below the value."""
    if divisor < 1:
        raise ValueError(f"divisor must be >= 1, got {divisor}")
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return int(rounded)


def round_channels(chs: int, width: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    return make_divisible(chs * width, divisor, round_limit=round_limit)


def round_repeats(repeats: int, depth: float, mode: str = "ceil") -> int:
    if mode == "ceil":
        return max(1, int(math.ceil(depth * repeats)))
    if mode == "round":
        return max(1, int(round(depth * repeats)))
    raise ValueError(f"depth rounding must be 'ceil' or 'round', got {mode!r}")


def scale(spec: NetSpec, width: float | None = None, depth: float | None = None) -> NetSpec:
    """Apply width and depth multipliers (default: the spec's own) with the official rounding,
    returning a concrete spec (multipliers 1.0, ``concrete`` True) that prints as a table.

    A concrete spec scales again from its concrete numbers, so ``scale`` composes only
    approximately; scale the unscaled base spec for the official tables."""
    w = spec.width if width is None else width
    d = spec.depth if depth is None else depth
    if not (w > 0 and d > 0) or not (math.isfinite(w) and math.isfinite(d)):
        raise ValueError(f"width and depth multipliers must be finite and > 0, got width={w}, depth={d}")
    c = spec.conv

    def chs(n: int) -> int:
        return round_channels(n, w, c.ch_divisor, c.ch_round_limit)

    stem = spec.stem
    if stem.scale:
        stem = replace(stem, out_chs=chs(stem.out_chs), widths=tuple(chs(x) for x in stem.widths))
    if spec.stage_depth and len(spec.stage_depth) != len(spec.stages):
        raise ValueError(f"stage_depth has {len(spec.stage_depth)} factors for {len(spec.stages)} stages")
    factors = spec.stage_depth or (1.0,) * len(spec.stages)
    stages = tuple(
        StageSpec(tuple(replace(r, out_chs=chs(r.out_chs), repeats=round_repeats(r.repeats, d * f, c.depth_round))
                        for r in s.rows))
        for s, f in zip(spec.stages, factors))
    head = spec.head
    if head.kind != "none":
        if head.rule == "scale":
            head = replace(head, chs=chs(head.chs))
        elif head.rule == "max":
            head = replace(head, chs=max(head.chs, chs(head.chs)))
    return replace(spec, stem=stem, stages=stages, head=head, width=1.0, depth=1.0, stage_depth=(), concrete=True)


@dataclass(frozen=True)
class Compound:
    """Multipliers from compound scaling: d = alpha^phi, w = beta^phi, r = gamma^phi."""

    phi: float
    depth: float
    width: float
    resolution: float

    @property
    def flops_factor(self) -> float:
        """Predicted FLOPs growth d * w^2 * r^2 (= (alpha*beta^2*gamma^2)^phi)."""
        return self.depth * self.width ** 2 * self.resolution ** 2


def compound(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> Compound:
    """Compound-scaling multipliers for any phi (negative and fractional included).

    Defaults are the EfficientNet paper's constants (alpha=1.2, beta=1.1, gamma=1.15, found by
    grid search under alpha*beta^2*gamma^2 ~= 2; arXiv 1905.11946 section 3.3)."""
    for name, v in (("phi", phi), ("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1 (the paper requires alpha, beta, gamma >= 1), got {v}")
    return Compound(phi=phi, depth=alpha ** phi, width=beta ** phi, resolution=gamma ** phi)


def scaled_resolution(base: int, multiplier: float, multiple: int = 8) -> int:
    """Input size for a resolution multiplier, rounded to a multiple of ``multiple``
    (at least one multiple)."""
    if multiplier <= 0:
        raise ValueError(f"resolution multiplier must be > 0, got {multiplier}")
    return max(multiple, int(round(base * multiplier / multiple)) * multiple)


__all__ = ["make_divisible", "round_channels", "round_repeats", "scale", "compound", "Compound",
           "scaled_resolution", "BlockSpec", "StageSpec", "StemSpec", "HeadSpec", "NetSpec"]
