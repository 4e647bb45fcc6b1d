"""Training recipes: a flat dataclass, loaded from YAML (shipped in ``effnets/recipes`` or a
user's file), overridden with ``key=value`` strings (``--set``), validated with clear errors."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError


@dataclass
class Progressive:
    """EfficientNetV2 progressive learning (see effnets.train.progressive).  ``stages`` <= 1 is off.
    Each pair is (first stage, last stage); a ``null`` end means "the recipe's own value"."""

    stages: int = 0
    image_size: list = field(default_factory=lambda: [128, None])
    randaug_magnitude: list = field(default_factory=lambda: [5.0, None])
    mixup_alpha: list = field(default_factory=lambda: [0.0, None])
    dropout: list = field(default_factory=lambda: [0.1, None])


@dataclass
class Recipe:
    """Every training setting.  Learning rate: ``lr = lr_base * global_batch / lr_base_batch``
    unless ``lr`` is given (the papers state their rates per batch of 256 or at batch 4096)."""

    name: str = "custom"
    description: str = ""
    model: str | None = None            # default model when the CLI names none
    model_args: dict = field(default_factory=dict)   # create_model overrides (width, depth, bn_eps...)
    # data
    data: str | None = None             # digits | synthetic | a folder with train/ and val/
    train_size: int | None = None       # None: the model card's train_size
    eval_size: int | None = None        # None: the model card's test_size
    crop_pct: float | None = None       # None: the model card's
    interpolation: str | None = None    # None: the model card's
    crop_scale: list = field(default_factory=lambda: [0.08, 1.0])  # random-resized-crop area range
    hflip: float = 0.5
    augment: str = "none"               # none | randaugment | autoaugment
    randaug_layers: int = 2
    randaug_magnitude: float = 10.0     # TF scale (10 = op maximum), see effnets.data.augment
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0
    label_smoothing: float = 0.0
    workers: int = 2
    synthetic_samples: int = 512
    # bad image files (see effnets.data.images): skipped and listed in <out>/bad_files.txt
    max_bad_fraction: float = 0.5       # per split: more bad image files than this stops the run
    verify_images: bool = False         # decode every image before training (finds truncated files up front)
    max_image_pixels: int = 89_478_485  # larger images are bad files (decompression-bomb guard)
    # model regularisation (None: the model card's)
    dropout: float | None = None
    drop_path: float | None = None
    # optimisation
    epochs: float = 10
    batch_size: int = 128               # per process
    accum_steps: int = 1
    optimizer: str = "sgd"              # sgd (Nesterov) | rmsprop (TF semantics) | adamw
    lr: float | None = None
    lr_base: float = 0.1
    lr_base_batch: int = 256
    momentum: float = 0.9
    nesterov: bool = True
    rmsprop_decay: float = 0.9
    opt_eps: float = 1e-3
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-5
    decay_norm_and_bias: bool = False   # False: no weight decay on norm and bias parameters
    schedule: str = "cosine"            # cosine | exponential | constant
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    decay_rate: float = 0.97
    decay_epochs: float = 2.4
    grad_clip: float = 0.0              # max global grad norm; 0 = off
    ema_decay: float = 0.0              # 0 = no EMA
    ema_warmup: bool = True
    best_metric: str = "auto"           # top1 | ema_top1 | auto (ema_top1 when EMA is on)
    progressive: Progressive = field(default_factory=Progressive)
    # precision and layout
    precision: str = "fp32"             # fp32 | bf16 | fp16 (fp16 on CUDA only)
    channels_last: bool = False
    sync_bn: bool = False
    # run control
    seed: int = 0
    eval_every: int = 1                 # epochs
    checkpoint_every: int = 0           # steps; 0 = at epoch ends only
    max_steps: int = 0                  # stop (with a checkpoint) after this many steps; 0 = no limit
    log_every: int = 10                 # steps between progress lines when not on a terminal
    device: str = "auto"                # auto | cpu | cuda
    nan_policy: str = "stop"            # non-finite loss: stop (keep the last good checkpoint) | skip the step
    max_skipped_steps: int = 10         # nan_policy skip: stop after this many skipped steps
    # fine-tuning (effnets train --finetune --checkpoint C): start from weights, new head if the
    # class count differs, optional frozen BN statistics / early stages, layer-wise LR decay
    init_checkpoint: str | None = None
    freeze_bn: bool = False
    freeze_stages: int = 0              # freeze the stem and the first N stages
    layer_decay: float = 1.0            # lr x layer_decay^(L-1-layer); 1 = off
    # teacher (ResNet-RS 3.3 / Noisy Student)
    teacher: str | None = None
    teacher_checkpoint: str | None = None
    teacher_args: dict = field(default_factory=dict)
    unlabeled: str | None = None
    pseudo_labels: str = "soft"         # hard | soft
    pseudo_threshold: float = 0.0       # drop pseudo-labelled images whose top probability is below

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def scaled_lr(self, global_batch: int) -> float:
        return self.lr if self.lr is not None else self.lr_base * global_batch / self.lr_base_batch


CHOICES = {
    "augment": ("none", "randaugment", "autoaugment"),
    "optimizer": ("sgd", "rmsprop", "adamw"),
    "schedule": ("cosine", "exponential", "constant"),
    "best_metric": ("top1", "ema_top1", "auto"),
    "precision": ("fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
    "pseudo_labels": ("hard", "soft"),
    "nan_policy": ("stop", "skip"),
}

# (low, high, low inclusive, high inclusive)
RANGES = {
    "epochs": (0, None, False, None), "batch_size": (1, None, True, None), "accum_steps": (1, None, True, None),
    "lr": (0, None, False, None), "lr_base": (0, None, False, None), "lr_base_batch": (1, None, True, None),
    "momentum": (0, 1, True, False), "rmsprop_decay": (0, 1, True, False), "opt_eps": (0, None, False, None),
    "weight_decay": (0, None, True, None), "warmup_epochs": (0, None, True, None), "warmup_lr": (0, None, True, None),
    "min_lr": (0, None, True, None), "decay_rate": (0, 1, False, True), "decay_epochs": (0, None, False, None),
    "grad_clip": (0, None, True, None), "ema_decay": (0, 1, True, False), "label_smoothing": (0, 1, True, False),
    "mixup_alpha": (0, None, True, None), "cutmix_alpha": (0, None, True, None), "mix_prob": (0, 1, True, True),
    "hflip": (0, 1, True, True), "randaug_layers": (0, None, True, None), "randaug_magnitude": (0, 30, True, True),
    "dropout": (0, 1, True, False), "drop_path": (0, 1, True, False), "workers": (0, None, True, None),
    "train_size": (8, None, True, None), "eval_size": (8, None, True, None), "crop_pct": (0, 1, False, True),
    "eval_every": (1, None, True, None), "checkpoint_every": (0, None, True, None),
    "layer_decay": (0, 1, False, True), "freeze_stages": (0, None, True, None),
    "max_steps": (0, None, True, None), "log_every": (1, None, True, None),
    "synthetic_samples": (2, None, True, None), "pseudo_threshold": (0, 1, True, False),
    "max_bad_fraction": (0, 1, True, True), "max_image_pixels": (1, None, True, None),
    "max_skipped_steps": (0, None, True, None), "seed": (0, None, True, None),
}


def _check_range(key: str, v) -> None:
    if key not in RANGES or v is None:
        return
    lo, hi, lo_inc, hi_inc = RANGES[key]
    ok = (lo is None or (v >= lo if lo_inc else v > lo)) and (hi is None or (v <= hi if hi_inc else v < hi))
    if not ok:
        lo_s = "" if lo is None else ("[" if lo_inc else "(") + f"{lo:g}"
        hi_s = "inf)" if hi is None else f"{hi:g}" + ("]" if hi_inc else ")")
        raise ConfigError(f"recipe setting {key} must be in {lo_s}, {hi_s}, got {v!r}")


def _unknown(key: str, known, where: str = "recipe") -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known settings: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {where} setting {key!r}{hint}")


def _coerce(key: str, value, default, ftype: str):
    """Check a value's type against the field's annotation (loosely: ints are accepted for floats)."""
    if value is None:
        if "None" in ftype:
            return None
        raise ConfigError(f"recipe setting {key} cannot be null")
    if "bool" in ftype:
        if not isinstance(value, bool):
            raise ConfigError(f"recipe setting {key} must be true or false, got {value!r}")
        return value
    if "float" in ftype or "int" in ftype:
        if isinstance(value, str):  # YAML 1.1 reads 5e-4 (no dot) as a string
            try:
                value = float(value) if any(c in value for c in ".eE") else int(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"recipe setting {key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"recipe setting {key} must be a finite number, got {value!r}")
        if "int" in ftype and "float" not in ftype:
            if float(value) != int(value):
                raise ConfigError(f"recipe setting {key} must be an integer, got {value!r}")
            return int(value)
        return float(value) if "float" in ftype and "int" not in ftype else value
    if "str" in ftype:
        if not isinstance(value, str):
            raise ConfigError(f"recipe setting {key} must be a string, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ConfigError(f"recipe setting {key} must be one of {', '.join(CHOICES[key])}, got {value!r}")
        return value
    if ftype == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"recipe setting {key} must be a mapping, got {value!r}")
        return dict(value)
    if ftype == "list":
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise ConfigError(f"recipe setting {key} must be a list of {len(default)} values, got {value!r}")
        nullable = key.startswith("progressive.")  # (first, last) pairs: null = the recipe's own value
        for v in value:
            if v is None and nullable:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"recipe setting {key} must be a list of {len(default)} finite numbers"
                                  + (" or nulls" if nullable else "") + f", got {value!r}")
        return list(value)
    return value


def _set(recipe: Recipe, key: str, value) -> None:
    if key == "progressive":
        if not isinstance(value, dict):
            raise ConfigError(f"recipe setting progressive must be a mapping, got {value!r}")
        for k, v in value.items():
            _set(recipe, f"progressive.{k}", v)
        return
    head, dot, rest = key.partition(".")
    ftypes = {f.name: str(f.type) for f in fields(Recipe)}
    if head not in ftypes:
        raise _unknown(key, ftypes)
    if dot and not rest:  # "progressive." (or {"progressive": {"": ...}}): no sub-setting named
        raise ConfigError(f"recipe setting {key!r} names no sub-setting: write {head}.NAME=VALUE")
    if rest:
        if head in ("model_args", "teacher_args"):
            getattr(recipe, head)[rest] = value
            return
        if head == "progressive":
            pt = {f.name: str(f.type) for f in fields(Progressive)}
            if rest not in pt:
                raise _unknown(rest, pt, "progressive")
            v = _coerce(key, value, getattr(recipe.progressive, rest), pt[rest])
            if rest == "stages" and v < 0:
                raise ConfigError(f"progressive.stages must be >= 0, got {v}")
            setattr(recipe.progressive, rest, v)
            return
        raise ConfigError(f"recipe setting {head} has no sub-settings (got {key!r})")
    v = _coerce(key, value, getattr(recipe, head), ftypes[head])
    _check_range(key, v)
    setattr(recipe, head, v)


def validate(recipe: Recipe) -> Recipe:
    lo, hi = recipe.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"recipe setting crop_scale must be 0 < min <= max <= 1, got {recipe.crop_scale}")
    if recipe.precision == "fp16" and recipe.device == "cpu":
        raise ConfigError("precision fp16 needs CUDA; use bf16 on CPU")
    p = recipe.progressive
    if p.stages > 1 and p.stages > recipe.epochs:
        raise ConfigError(f"progressive.stages ({p.stages}) cannot exceed epochs ({recipe.epochs:g})")
    return recipe


def recipe_names() -> list[str]:
    files = resources.files("effnets") / "recipes"
    return sorted(f.name[:-5] for f in files.iterdir() if f.name.endswith(".yaml"))


def load_recipe(name_or_path: str | os.PathLike | Recipe | None = "demo", overrides=None) -> Recipe:
    """A shipped recipe by name (``efficientnet``, ``resnet_rs``, ``efficientnetv2``, ``demo``) or a
    YAML file path, then ``overrides`` (a dict, or ``["key=value", ...]`` as from ``--set``)."""
    if isinstance(name_or_path, Recipe):
        recipe = dataclasses.replace(name_or_path, progressive=dataclasses.replace(name_or_path.progressive),
                                     model_args=dict(name_or_path.model_args))
    else:
        name = str(name_or_path or "demo")
        if os.path.isfile(name):
            path, text = name, open(name, encoding="utf-8").read()
        elif name in recipe_names():
            path = f"effnets/recipes/{name}.yaml"
            text = (resources.files("effnets") / "recipes" / f"{name}.yaml").read_text(encoding="utf-8")
        else:
            raise ConfigError(f"unknown recipe {name!r}: not a file, and not one of {', '.join(recipe_names())}")
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {path} must be a mapping of settings")
        recipe = Recipe()
        for k, v in raw.items():
            _set(recipe, str(k), v)
        if recipe.name == "custom" and name in recipe_names():
            recipe.name = name
    apply_overrides(recipe, overrides)
    return validate(recipe)


def parse_assignment(text: str) -> tuple[str, Any]:
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(recipe: Recipe, overrides) -> Recipe:
    if not overrides:
        return recipe
    items = overrides.items() if isinstance(overrides, dict) else (parse_assignment(s) for s in overrides)
    for k, v in items:
        _set(recipe, k, v)
    return validate(recipe)


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
