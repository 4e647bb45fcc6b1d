"""Model registry: names -> (builder, model card), with errors that suggest the fix."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from torch import nn

from .errors import ConfigError
from .scaling import scale
from .spec import Conventions, NetSpec


@dataclass(frozen=True)
class PaperFigures:
    """Figures as printed in a paper or official README, with where they come from."""

    params_m: float | None = None  # millions
    macs_g: float | None = None  # multiply-adds, billions (papers say "FLOPs")
    top1: float | None = None
    top5: float | None = None
    source: str = ""


@dataclass(frozen=True)
class ModelCard:
    """What a user needs to use a model right: preprocessing, paper figures, recipe."""

    name: str
    family: str
    paper: str
    arxiv: str
    train_size: int
    test_size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    figures: PaperFigures = field(default_factory=PaperFigures)
    recipe: str = ""
    dropout: float = 0.0
    drop_path: float = 0.0
    notes: str = ""
    extra: tuple[tuple[str, Any], ...] = ()  # family-specific recipe facts (e.g. RandAugment magnitude)

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["figures"] = {f.name: getattr(self.figures, f.name) for f in fields(self.figures)}
        d["extra"] = dict(self.extra)
        return d

    def __str__(self) -> str:
        f = self.figures
        figs = [f"params {f.params_m:g}M" if f.params_m else "", f"MACs {f.macs_g:g}G" if f.macs_g else "",
                f"top-1 {f.top1:g}" if f.top1 else "", f"top-5 {f.top5:g}" if f.top5 else ""]
        lines = [f"{self.name} ({self.family}) - {self.paper}, arXiv {self.arxiv}",
                 f"  input: train {self.train_size}, test {self.test_size}, crop {self.crop_pct:g}, "
                 f"{self.interpolation}, mean {self.mean}, std {self.std}",
                 f"  paper: {', '.join(x for x in figs if x) or '-'}  [{f.source}]",
                 f"  recipe: {self.recipe}, dropout {self.dropout:g}, drop_path {self.drop_path:g}"]
        for k, v in self.extra:
            lines.append(f"  {k}: {v}")
        if self.notes:
            lines.append(f"  notes: {self.notes}")
        return "\n".join(lines)


Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: how to build it, which overrides it takes, and its card.

    ``spec`` is set for convnet families (the unscaled base NetSpec), which then accept
    ``width``/``depth`` and every Conventions field as overrides."""

    name: str
    build: Builder
    card: ModelCard
    overrides: tuple[str, ...]
    spec: NetSpec | None = None


_REGISTRY: dict[str, ModelEntry] = {}

CONVNET_OVERRIDES = ("width", "depth", "dropout", "drop_path", "resolution") + tuple(
    f.name for f in fields(Conventions))


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def resolve_spec(spec: NetSpec, overrides: dict) -> NetSpec:
    """Apply overrides to a base spec: multipliers and regularisation replace the spec's own,
    convention fields replace the conventions."""
    conv_keys = {f.name for f in fields(Conventions)}
    conv_changes = {k: v for k, v in overrides.items() if k in conv_keys}
    top = {k: v for k, v in overrides.items() if k not in conv_keys}
    try:
        conv = replace(spec.conv, **conv_changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad convention override: {e}") from None
    for k in ("dropout", "drop_path"):
        if k in top and not 0 <= top[k] < 1:
            raise ConfigError(f"{k} must be in [0, 1), got {top[k]}")
    return scale(replace(spec, conv=conv, **top))


def convnet_entry(name: str, spec: NetSpec, card: ModelCard) -> ModelEntry:
    """Register-ready entry for a ConvNet family member."""
    from .nets.convnet import ConvNet

    def build(num_classes: int = 1000, in_chans: int = 3, **overrides) -> nn.Module:
        return ConvNet(resolve_spec(spec, overrides), num_classes=num_classes, in_chans=in_chans)

    return ModelEntry(name=name, build=build, card=card, overrides=CONVNET_OVERRIDES, spec=spec)


def _ensure_loaded() -> None:
    from . import models  # noqa: F401  (registers every family)


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {type(name).__name__}")
    if "@" in name:
        return scaled_entry(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see effnets.list_models()"
        raise ConfigError(f"unknown model {name!r}{hint}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, in registration order."""
    _ensure_loaded()
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def model_card(name: str) -> ModelCard:
    return get_entry(name).card


def get_spec(name: str, **overrides) -> NetSpec:
    """The concrete NetSpec a convnet name (with overrides) builds."""
    entry = get_entry(name)
    if entry.spec is None:
        raise ConfigError(f"{name!r} is not a stage-based convnet; it has no NetSpec")
    check_overrides(entry, overrides)
    return resolve_spec(entry.spec, overrides)


def check_overrides(entry: ModelEntry, overrides: dict) -> None:
    bad = sorted(set(overrides) - set(entry.overrides))
    if bad:
        raise ConfigError(f"{entry.name} does not take override(s) {', '.join(bad)}; "
                          f"allowed: {', '.join(entry.overrides)}")


def scaled_entry(name: str) -> ModelEntry:
    """Entry for ``base@phi=X[,rule=...,alpha=...,beta=...,gamma=...,res=...]``: the base scaled by
    ``effnets.scaling.rules`` with a card whose input size is the scaled resolution."""
    from .nets.convnet import ConvNet
    from .scaling.rules import parse_scaled_name, scale_model
    base_name, params = parse_scaled_name(name)
    base = get_entry(base_name)
    scaled = scale_model(base_name, **params)
    card = replace(base.card, name=scaled.name, train_size=scaled.resolution, test_size=scaled.resolution,
                   notes=f"{base_name} scaled by the {scaled.rule} rule: phi={scaled.phi:g}, width x{scaled.width:.3f}, "
                         f"depth x{scaled.depth:.3f}, resolution {scaled.resolution}",
                   figures=PaperFigures(source="none: a scaled model has no paper figures"))

    def build(num_classes: int = 1000, in_chans: int = 3, **overrides) -> nn.Module:
        return ConvNet(resolve_spec(scaled.spec, overrides), num_classes=num_classes, in_chans=in_chans)

    allowed = tuple(k for k in CONVNET_OVERRIDES if k not in ("width", "depth", "resolution"))
    return ModelEntry(name=scaled.name, build=build, card=card, overrides=allowed, spec=scaled.spec)
