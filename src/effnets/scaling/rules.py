"""Scaling any stage-based base network by a coefficient phi, under three strategies, and
picking phi for a MACs budget.

Rules (``rule=``):
  compound   EfficientNet (arXiv 1905.11946 eq. 3): d = alpha^phi, w = beta^phi, r = gamma^phi.
  v2         EfficientNetV2 (arXiv 2104.00298 section 4.3): compound, but the image size is capped
             (480 in the paper) and extra depth goes to later stages. The paper gives no formula for
             the stage split; ours spreads the depth exponent linearly over the stages, from 0.5x to
             1.5x of the compound exponent (mean 1), so early stages grow slowly and late ones fast.
  resnet-rs  ResNet-RS (arXiv 2103.07579 section 7): resolution grows slowly (r = gamma^(phi/2));
             the rest of the compound FLOPs growth goes to depth when overfitting is possible
             (``regime="long"``: long training) or to width otherwise (``regime="short"``).
  efficientnet-rs  the same paper's EfficientNet-RS: compound depth and width, but for phi > 3
             (B4 and up) resolution grows at half the exponent. (Our reading of "slower
             resolution growth"; the paper lists sizes, not a formula.)
Every rule keeps FLOPs growth close to (alpha * beta^2 * gamma^2)^phi; `law.py` measures how close.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError
from ..spec import NetSpec
from .core import compound, scale

RULES = ("compound", "v2", "resnet-rs", "efficientnet-rs")
PHI_RANGE = (-8.0, 12.0)  # beyond this the multipliers stop meaning anything (or blow memory)
RESOLUTION_MULTIPLE = 4  # official sizes (240, 260, 300, 380, 456, 528, 600) are multiples of 4
V2_MAX_SIZE = 480


@dataclass(frozen=True)
class Scaled:
    """A base network scaled by phi: the multipliers applied and the concrete spec."""

    base: str
    rule: str
    phi: float
    alpha: float
    beta: float
    gamma: float
    width: float  # applied to the base's own width
    depth: float
    resolution: int
    stage_depth: tuple[float, ...]
    spec: NetSpec
    res_fixed: bool = False  # resolution set explicitly (budget fill), not by the rule

    @property
    def name(self) -> str:
        """A name create_model accepts: ``efficientnet_b0@phi=1.5`` (+ non-default settings)."""
        parts = [f"phi={self.phi:g}"]
        if self.res_fixed:
            parts.append(f"res={self.resolution}")
        if self.rule != "compound":
            parts.append(f"rule={self.rule}")
        for k, default in (("alpha", 1.2), ("beta", 1.1), ("gamma", 1.15)):
            if not math.isclose(getattr(self, k), default):
                parts.append(f"{k}={getattr(self, k):g}")
        return f"{self.base}@" + ",".join(parts)


def _check(phi: float, rule: str, regime: str) -> None:
    if not (isinstance(phi, (int, float)) and math.isfinite(phi)):
        raise ConfigError(f"phi must be a finite number, got {phi!r}")
    if not PHI_RANGE[0] <= phi <= PHI_RANGE[1]:
        raise ConfigError(f"phi={phi:g} is outside the supported range {PHI_RANGE[0]:g} .. {PHI_RANGE[1]:g}")
    if rule not in RULES:
        raise ConfigError(f"unknown scaling rule {rule!r}; choose one of {', '.join(RULES)}")
    if regime not in ("long", "short"):
        raise ConfigError(f"regime must be 'long' or 'short', got {regime!r}")


def scale_spec(base_name: str, base: NetSpec, phi: float, alpha: float = 1.2, beta: float = 1.1,
               gamma: float = 1.15, rule: str = "compound", regime: str = "long", res: int | None = None) -> Scaled:
    """Scale an (unscaled) base spec by phi under ``rule``; multipliers compose with the base's own.
    ``res`` fixes the input size instead of the rule's."""
    _check(phi, rule, regime)
    try:
        c = compound(phi, alpha, beta, gamma)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    width, depth, res_mult = c.width, c.depth, c.resolution
    stage_depth: tuple[float, ...] = ()
    n = len(base.stages)
    if rule == "v2":
        # depth exponent per stage: phi * (0.5 .. 1.5), mean phi (see module doc)
        weights = [0.5 + i / max(1, n - 1) for i in range(n)]
        stage_depth = tuple(alpha ** (phi * w) / depth for w in weights)
    elif rule == "resnet-rs":
        res_mult = gamma ** (phi / 2)
        rest = c.flops_factor / res_mult ** 2
        width, depth = (1.0, rest) if regime == "long" else (math.sqrt(rest), 1.0)
    elif rule == "efficientnet-rs" and phi > 3:
        res_mult = gamma ** (3 + (phi - 3) / 2)
    resolution = max(RESOLUTION_MULTIPLE,
                     int(round(base.resolution * res_mult / RESOLUTION_MULTIPLE)) * RESOLUTION_MULTIPLE)
    if rule == "v2":
        resolution = min(resolution, V2_MAX_SIZE)
    if res is not None:
        if not isinstance(res, int) or res < 16:
            raise ConfigError(f"res must be an integer input size >= 16, got {res!r}")
        resolution = res
    spec = scale(replace(base, width=base.width * width, depth=base.depth * depth, resolution=resolution,
                         stage_depth=stage_depth))
    return Scaled(base=base_name, rule=rule, phi=phi, alpha=alpha, beta=beta, gamma=gamma, width=width,
                  depth=depth, resolution=resolution, stage_depth=stage_depth, spec=spec, res_fixed=res is not None)


def scale_model(base: str, phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
                rule: str = "compound", regime: str = "long", res: int | None = None) -> Scaled:
    """Scale a registered stage-based model (EfficientNet, MobileNet, MnasNet, EfficientNetV2,
    ResNet-RS) by phi."""
    from ..registry import get_entry
    entry = get_entry(base)
    if entry.spec is None:
        raise ConfigError(f"{base!r} has no stage table to scale; scaling works on EfficientNet V1/V2, "
                          "MobileNet V1-V3, MnasNet and ResNet-RS")
    return scale_spec(base, entry.spec, phi, alpha, beta, gamma, rule, regime, res)


def spec_macs(spec: NetSpec, resolution: int | None = None) -> int:
    """MACs of a spec at its resolution, counted on the meta device (no weights allocated)."""
    from ..nets.convnet import ConvNet
    from ..profiling import count_macs
    size = resolution or spec.resolution
    with torch.device("meta"):
        model = ConvNet(spec).eval()
        return count_macs(model, torch.zeros(1, 3, size, size))


def scaled_macs(s: Scaled) -> int:
    return spec_macs(s.spec, s.resolution)


def fit_budget(base: str, budget_macs: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15,
               rule: str = "compound", regime: str = "long", tol: float = 0.01) -> tuple[Scaled, int]:
    """The largest phi whose measured MACs fit ``budget_macs``; returns (scaled model, its MACs).

    MACs grow with phi in steps (channel and repeat rounding), so the next step can overshoot the
    budget by 10-20%.  A bisection finds the largest phi that fits; then the input size grows in
    steps of 4 px while it still fits, which fills the budget to within a few percent."""
    if not (isinstance(budget_macs, (int, float)) and budget_macs > 0 and math.isfinite(budget_macs)):
        raise ConfigError(f"the MACs budget must be a positive number, got {budget_macs!r}")
    cache: dict[float, tuple[Scaled, int]] = {}

    def at(phi: float) -> tuple[Scaled, int]:
        phi = round(phi, 6)
        if phi not in cache:
            s = scale_model(base, phi, alpha, beta, gamma, rule, regime)
            cache[phi] = (s, scaled_macs(s))
        return cache[phi]

    lo, hi = PHI_RANGE
    tol = max(tol, 1e-4)
    if at(lo)[1] > budget_macs:
        raise ConfigError(f"even phi={lo:g} of {base} needs {at(lo)[1] / 1e9:.4g} GMACs, over the budget "
                          f"of {budget_macs / 1e9:.4g} G")
    if at(hi)[1] <= budget_macs:
        return at(hi)
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if at(mid)[1] <= budget_macs:
            lo = mid
        else:
            hi = mid
    best, macs = at(lo)
    candidates = [(best, macs), _fill_resolution(base, best, macs, budget_macs, alpha, beta, gamma, rule, regime),
                  _fill_depth_width(base, best, budget_macs, alpha, beta, gamma, rule, regime, tol)]
    return max((c for c in candidates if c is not None and c[1] <= budget_macs), key=lambda c: c[1])


def _fill_resolution(base, best: Scaled, macs: int, budget, alpha, beta, gamma, rule, regime):
    """Same phi, larger input: MACs ~ res^2, so jump near the largest size that fits and step
    down (sizes that are not multiples of 32 round feature maps up and cost more)."""
    res = int(best.resolution * math.sqrt(budget / macs)) // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE
    while res > best.resolution:
        cand = scale_model(base, best.phi, alpha, beta, gamma, rule, regime, res=res)
        cand_macs = scaled_macs(cand)
        if cand_macs <= budget:
            return cand, cand_macs
        res -= RESOLUTION_MULTIPLE
    return None


def _fill_depth_width(base, best: Scaled, budget, alpha, beta, gamma, rule, regime, tol):
    """Same input size, larger phi for width and depth only."""
    lo, hi, found = best.phi, best.phi + 1.0, None
    while hi - lo > tol:
        mid = (lo + hi) / 2
        cand = scale_model(base, round(mid, 6), alpha, beta, gamma, rule, regime, res=best.resolution)
        cand_macs = scaled_macs(cand)
        if cand_macs <= budget:
            lo, found = mid, (cand, cand_macs)
        else:
            hi = mid
    return found


def parse_scaled_name(name: str) -> tuple[str, dict]:
    """``base@phi=1.5,rule=v2,alpha=1.2`` -> ("base", {...}). Raises ConfigError on bad parts."""
    base, _, rest = name.partition("@")
    params: dict = {}
    allowed = {"phi": float, "alpha": float, "beta": float, "gamma": float, "rule": str, "regime": str,
               "res": int}
    for part in filter(None, rest.split(",")):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in allowed:
            raise ConfigError(f"bad scaled-model name {name!r}: {part!r} is not one of "
                              f"{', '.join(k + '=...' for k in allowed)}")
        try:
            params[key] = allowed[key](value.strip())
        except ValueError:
            raise ConfigError(f"bad scaled-model name {name!r}: {key} must be a number, got {value!r}") from None
    if "phi" not in params:
        raise ConfigError(f"scaled-model name {name!r} needs phi, e.g. {base}@phi=1.5")
    return base, params
