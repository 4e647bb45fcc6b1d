"""``effnets convert --from timm|torchvision|keras SRC --out FOLDER [NAME]``: another library's
weights -> an effnets weight folder (``weights/folder.py``), with a per-layer parity report
against the source library when it is installed.

timm / torchvision: SRC is a state-dict file (``.safetensors``/``.pth``) or a Hugging Face style
folder (timm's hub folders carry ``config.json`` with ``architecture``, ``pretrained_cfg`` and
``label_names``).  The source architecture (``--source-model``, or the folder's config) lets us
build the source model for the parity run, read its conventions (BatchNorm eps, TF "same"
padding) and guess NAME.  Keras: see ``weights/keras.py``.

Parity: both models run one random input; modules are paired through the key mapping
(the source tensor each of our tensors came from), and every paired module's output is compared
(max |ours - theirs| / max |theirs|).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .folder import preprocessing_of, save_folder
from .io import read_state_dict
from .load import map_to_model

SOURCES = ("timm", "torchvision", "keras")

# source architecture name -> effnets name, for the families we build (regex, replacement)
_NAME_RULES = [
    (r"^(tf_)?efficientnet_(b[0-8]|l2)$", r"efficientnet_\2"),
    (r"^(tf_)?efficientnetv2_(s|m|l|xl|b[0-3])$", r"efficientnetv2_\2"),
    (r"^efficientnet_v2_(s|m|l)$", r"efficientnetv2_\1"),
    (r"^(tf_)?mobilenetv2_100$", "mobilenet_v2"), (r"^mobilenet_v2$", "mobilenet_v2"),
    (r"^(tf_)?mobilenetv3_(large|small)_100$", r"mobilenet_v3_\2"), (r"^mobilenet_v3_(large|small)$", r"mobilenet_v3_\1"),
    (r"^(tf_)?mnasnet_100$", "mnasnet_b1"), (r"^mnasnet1_0$", "mnasnet_b1"),
    (r"^(tf_)?mnasnet_a1$", "mnasnet_a1"), (r"^(tf_)?semnasnet_100$", "mnasnet_a1"),
    (r"^resnetrs(\d+)$", r"resnet_rs_\1"),
    (r"^vit_(tiny|small|base|large)_patch(16|32)_224$", r"vit_\1_\2"),
    (r"^vit_b_(16|32)$", r"vit_base_\1"), (r"^vit_l_16$", "vit_large_16"),
    (r"^coatnet_([0-4])_224$", r"coatnet_\1"),
]


def guess_name(source_model: str) -> str | None:
    from ..registry import list_models
    arch = source_model.split(".")[0]
    for pat, rep in _NAME_RULES:
        if re.match(pat, arch):
            n = re.sub(pat, rep, arch)
            return n if n in list_models() else None
    return arch if arch in list_models() else None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _read_source_folder_cfg(src: Path) -> dict:
    if src.is_dir() and (src / "config.json").is_file():
        try:
            return json.loads((src / "config.json").read_text())
        except json.JSONDecodeError:
            return {}
    return {}


def build_source(source: str, source_model: str, num_classes: int) -> nn.Module | None:
    """The source library's model (random weights), or None when the library is missing."""
    try:
        if source == "timm":
            import timm
            return timm.create_model(source_model, pretrained=False, num_classes=num_classes)
        if source == "torchvision":
            import torchvision
            return torchvision.models.get_model(source_model, weights=None, num_classes=num_classes)
    except ImportError:
        return None
    return None


def source_conventions(src_model: nn.Module | None, source: str, source_model: str | None) -> dict:
    """Overrides that reproduce the source's conventions: BN eps of its first BatchNorm, TF
    'same' padding when it pads per input size (timm's Conv2dSame / tf_* models)."""
    ov: dict = {}
    if src_model is not None:
        bn = next((m for m in src_model.modules() if isinstance(m, nn.BatchNorm2d)), None)
        if bn is not None and abs(bn.eps - 1e-5) > 1e-12:
            ov["bn_eps"] = bn.eps
        if any("Same" in type(m).__name__ for m in src_model.modules()):
            ov["padding"] = "same"
    elif source_model and source_model.startswith("tf_"):
        ov.update(padding="same", bn_eps=1e-3)
    return ov


def _num_classes(sd: Mapping[str, torch.Tensor]) -> int:
    for k in reversed(list(sd)):
        if k.endswith("weight") and sd[k].ndim == 2:
            return int(sd[k].shape[0])
    return 0


def _clone(y):
    # copies: the next (in-place) activation of torchvision / timm models would change them
    return y.clone() if isinstance(y, torch.Tensor) else y


def module_parity(ours: nn.Module, theirs: nn.Module, pairs: list[tuple[str, str]], x: torch.Tensor) -> list[dict]:
    """Outputs of paired modules (ours, theirs) on the same input."""
    o_mods, t_mods = dict(ours.named_modules()), dict(theirs.named_modules())
    # timm fuses BN and activation (BatchNormAct2d): compare with our conv-norm-act's output
    pairs = [(o.rsplit(".", 1)[0] if type(t_mods.get(t)).__name__ == "BatchNormAct2d" and o.endswith(".bn") else o, t)
             for o, t in pairs]
    o_out, t_out, hooks = {}, {}, []
    for o, t in pairs:
        if o in o_mods and t in t_mods:
            hooks.append(o_mods[o].register_forward_hook(lambda _m, _i, y, k=o: o_out.__setitem__(k, _clone(y))))
            hooks.append(t_mods[t].register_forward_hook(lambda _m, _i, y, k=t: t_out.__setitem__(k, _clone(y))))
    ours.eval(), theirs.eval()
    try:
        with torch.no_grad():
            final_o, final_t = ours(x), theirs(x)
    finally:
        for h in hooks:
            h.remove()
    report = []
    for o, t in pairs:
        a, b = o_out.get(o), t_out.get(t)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.numel() == b.numel():
            b = b.reshape(a.shape)
            err = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
            report.append({"effnets": o, "source": t, "rel_err": err, "shape": list(a.shape)})
    err = float((final_o - final_t).abs().max() / final_t.abs().max().clamp_min(1e-12))
    report.append({"effnets": "(output)", "source": "(output)", "rel_err": err, "shape": list(final_o.shape)})
    return report


def _pairs_from_mapping(sd: dict, mapped: dict) -> list[tuple[str, str]]:
    by_ptr = {}
    for k, v in sd.items():
        by_ptr.setdefault((v.data_ptr(), v.numel()), k)
    pairs, seen = [], set()
    for d, v in mapped.items():
        s = by_ptr.get((v.data_ptr(), v.numel()))
        if s is None or "." not in d or "." not in s:
            continue
        pair = (d.rsplit(".", 1)[0], s.rsplit(".", 1)[0])
        if pair not in seen:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def convert(source: str, src: str | os.PathLike, out: str | os.PathLike, name: str | None = None, *,
            source_model: str | None = None, overrides: Mapping | None = None, labels: list[str] | None = None,
            parity: bool = True, parity_size: int | None = None) -> dict:
    """Convert and write the folder; returns {"folder", "name", "overrides", "parity": [...] | None,
    "parity_note"}."""
    from ..factory import create_model

    if source not in SOURCES:
        raise ConfigError(f"--from must be one of {', '.join(SOURCES)}, got {source!r}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist")
    result: dict = {"source": source}
    if source == "keras":
        from .keras import convert_keras, keras_parity
        model, info = convert_keras(src, name)
        rep = None
        note = None
        if parity:
            try:
                rep = keras_parity(model, src, info, size=parity_size)
            except Exception as e:  # a parity failure must not hide the conversion result
                note = f"parity run failed: {type(e).__name__}: {e}"
            if rep is None and note is None:
                note = "keras is not installed: no parity report (pip install keras; KERAS_BACKEND=torch)"
        prov = {"source": "keras", "source_file": src.name, "sha256": sha256(src), "keras_format": info["format"],
                "keras_preprocessing": info["preprocessing"]["keras_preprocessing"]}
        if rep:
            prov["parity_max_rel_err"] = max(r["rel_err"] for r in rep)
        save_folder(model, out, labels=labels, preprocessing=info["preprocessing"], provenance=prov)
        result.update(folder=str(out), name=info["name"], overrides=dict(model.overrides), parity=rep, parity_note=note)
        return result

    cfg = _read_source_folder_cfg(src)
    source_model = source_model or cfg.get("architecture")
    sd = read_state_dict(src)
    num_classes = _num_classes(sd)
    if labels is None and isinstance(cfg.get("label_names"), list) and len(cfg["label_names"]) == num_classes:
        labels = list(cfg["label_names"])
    if name is None:
        name = guess_name(source_model) if source_model else None
        if name is None:
            raise ConfigError("cannot tell which effnets model to build: pass NAME (and --source-model for "
                              "the parity report)")
    src_model = build_source(source, source_model, num_classes) if (source_model and parity) else None
    ov = source_conventions(src_model, source, source_model)
    if name.startswith("coatnet") and source_model and source_model.startswith("coatnet") and source == "timm":
        ov.setdefault("stride_mode", "dw")
    ov.update(overrides or {})
    from ..registry import get_entry
    allowed = set(get_entry(name).overrides)
    ov = {k: v for k, v in ov.items() if k in allowed}
    model = create_model(name, num_classes=num_classes, **ov)
    mapped, layout = map_to_model(sd, model)
    from .load import load_checkpoint
    load_checkpoint(model, sd)
    pre = preprocessing_of(model)
    pcfg = cfg.get("pretrained_cfg", {}) if isinstance(cfg.get("pretrained_cfg"), dict) else {}
    for k_src, k_dst in (("mean", "mean"), ("std", "std"), ("crop_pct", "crop_pct"), ("interpolation", "interpolation")):
        if k_src in pcfg:
            pre[k_dst] = pcfg[k_src]
    if "input_size" in pcfg:
        pre["input_size"] = int(pcfg["input_size"][-1])
    rep, note = None, None
    if parity:
        if src_model is None:
            note = (f"no parity report: {source} is not installed or the source architecture is unknown "
                    "(pass --source-model)")
        else:
            try:
                src_model.load_state_dict(sd, strict=True)
                size = parity_size or min(pre.get("input_size", 224), 224)
                g = torch.Generator().manual_seed(0)
                x = torch.randn(1, 3, size, size, generator=g)
                rep = module_parity(model, src_model, _pairs_from_mapping(sd, mapped), x)
            except Exception as e:
                note = f"parity run failed: {type(e).__name__}: {e}"
    prov = {"source": source, "source_model": source_model, "source_file": src.name, "sha256": sha256(src),
            "key_layout": layout}
    if rep:
        prov["parity_max_rel_err"] = max(r["rel_err"] for r in rep)
    save_folder(model, out, labels=labels, preprocessing=pre, provenance=prov)
    result.update(folder=str(out), name=name, overrides=ov, parity=rep, parity_note=note)
    return result


def format_parity(rep: list[dict] | None, limit: int | None = None) -> str:
    if not rep:
        return "no parity report"
    lines = [f"{'effnets module':<36} {'source module':<40} {'rel err':>10}  shape"]
    rows = rep if limit is None or len(rep) <= limit else rep[: limit - 1] + [rep[-1]]
    for r in rows:
        lines.append(f"{r['effnets']:<36} {r['source']:<40} {r['rel_err']:>10.2e}  {tuple(r['shape'])}")
    if limit is not None and len(rep) > limit:
        lines.insert(len(lines) - 1, f"... ({len(rep) - limit} more)")
    worst = max(rep, key=lambda r: r["rel_err"])
    lines.append(f"{len(rep)} layers compared, max relative error {worst['rel_err']:.2e} at {worst['effnets']}")
    return "\n".join(lines)
