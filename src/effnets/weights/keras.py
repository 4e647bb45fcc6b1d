"""Keras Applications EfficientNet B0-B7 / EfficientNetV2 weights -> effnets, without TensorFlow.

Reads the HDF5 file with h5py; both layouts Keras writes are understood:
  * Keras 3 ``.weights.h5``: ``layers/<class_name>[_n]/vars/<i>`` (layer names are *not*
    stored; the groups of one class are numbered in model order);
  * legacy ``.h5`` (tf.keras ``save_weights`` / ``model.save``, the official ImageNet files):
    ``[model_weights/]<layer>/<layer>/<var>`` with ``layer_names`` / ``weight_names`` attributes
    in model order (and the model config when the whole model was saved).
Tensors are collected per kind in model order (Conv2D, DepthwiseConv2D, BatchNormalization,
Dense) and aligned with our modules of the same kind in module order; every pair must agree in
shape.  Layouts: Conv2D (kh, kw, in, out) -> (out, in, kh, kw); DepthwiseConv2D
(kh, kw, in, mult) -> (in*mult, 1, kh, kw); Dense (in, out) -> (out, in); BN
gamma/beta/moving_mean/moving_variance -> weight/bias/running_mean/running_var.

The Keras models differ from ours by convention only: TF "same" padding (Keras pads strided
convs with ``correct_pad`` = TF SAME at the fixed input size), BatchNormalization epsilon 1e-3
(keras/src/applications/efficientnet.py, efficientnet_v2.py), so the model is built with
``padding="same", bn_eps=1e-3``.  Keras feeds raw [0, 255] pixels through built-in layers:
  V1:  Rescaling(1/255) -> Normalization(mean, variance from the file) [-> Rescaling(1/sqrt(std))
       in models built with weights="imagenet", the fix for tensorflow/tensorflow#49930]
  V2-B*:  Rescaling(1/255) -> Normalization(ImageNet mean, std**2)
  V2-S/M/L:  Rescaling(1/128, offset=-1)
which becomes the folder's ``preprocessing`` (mean/std on [0, 1] pixels).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..profiling import forward_with_hooks

KERAS_OVERRIDES = {"padding": "same", "bn_eps": 1e-3}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

KIND_BY_CLASS = {"conv2d": "conv", "depthwise_conv2d": "dw", "batch_normalization": "bn", "dense": "dense",
                 "normalization": "norm"}
_CLASS_TO_SNAKE = {"Conv2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d", "BatchNormalization": "batch_normalization",
                   "Dense": "dense", "Normalization": "normalization"}


def keras_name_to_effnets(name: str) -> str | None:
    """``EfficientNetB3`` / ``efficientnetb3`` -> efficientnet_b3; ``EfficientNetV2S`` /
    ``efficientnetv2-s`` -> efficientnetv2_s."""
    n = name.lower().replace("-", "").replace("_", "")
    m = re.fullmatch(r"efficientnet(v2)?(b[0-7]|s|m|l)", n)
    if not m:
        return None
    return f"efficientnet{'v2' if m.group(1) else ''}_{m.group(2)}"


def _decode(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def read_keras_h5(path: str | os.PathLike) -> dict:
    """{"layers": [(kind, name, [arrays])...] in model order, "config": dict | None,
    "format": "keras3" | "legacy"}."""
    try:
        import h5py
    except ImportError:
        raise CheckpointError("reading Keras weights needs h5py: pip install h5py") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CheckpointError(f"{path} is not an HDF5 file ({e})") from None
    with f:
        if "layers" in f and isinstance(f["layers"], h5py.Group) and "layer_names" not in f.attrs:
            layers = []
            for gname in f["layers"].keys():
                m = re.fullmatch(r"(.+?)(?:_(\d+))?", gname)
                cls, n = m.group(1), int(m.group(2) or 0)
                kind = KIND_BY_CLASS.get(cls)
                vars_ = f["layers"][gname].get("vars")
                if kind is None or vars_ is None or not len(vars_):
                    continue
                arrays = [np.asarray(vars_[k]) for k in sorted(vars_.keys(), key=int)]
                layers.append((kind, gname, arrays, (cls, n)))
            # model order within a class = the numbering; kinds are matched separately
            layers.sort(key=lambda t: t[3])
            cfg = None
            return {"layers": [t[:3] for t in layers], "config": cfg, "format": "keras3"}
        g = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in g.attrs:
            raise CheckpointError(f"{path}: neither a Keras 3 .weights.h5 nor a legacy Keras .h5 weights file")
        cfg = None
        if "model_config" in f.attrs:
            cfg = json.loads(_decode(f.attrs["model_config"]))
        classes = {}
        if cfg:
            for layer in cfg.get("config", {}).get("layers", []):
                classes[layer.get("name") or layer["config"]["name"]] = layer["class_name"]
        layers = []
        for lname in (_decode(n) for n in g.attrs["layer_names"]):
            grp = g[lname]
            wnames = [_decode(n) for n in grp.attrs.get("weight_names", [])]
            if not wnames:
                continue
            arrays = [np.asarray(grp[w]) for w in wnames]
            short = [w.split("/")[-1].split(":")[0] for w in wnames]
            kind = KIND_BY_CLASS.get(_CLASS_TO_SNAKE.get(classes.get(lname, ""), ""))
            if kind is None:
                if "depthwise_kernel" in short:
                    kind = "dw"
                elif "moving_mean" in short:
                    kind = "bn"
                elif "mean" in short and "variance" in short:
                    kind = "norm"
                elif short[0] == "kernel" and arrays[0].ndim == 4:
                    kind = "dw" if "dwconv" in lname and arrays[0].shape[-1] == 1 else "conv"
                elif short[0] == "kernel" and arrays[0].ndim == 2:
                    kind = "dense"
                else:
                    continue
            layers.append((kind, lname, arrays))
        return {"layers": layers, "config": cfg, "format": "legacy"}


def _own_modules(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    kinds: dict[str, list] = {"conv": [], "dw": [], "bn": [], "dense": []}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            dw = m.groups > 1 and m.groups == m.in_channels
            kinds["dw" if dw else "conv"].append((name, m))
        elif isinstance(m, nn.BatchNorm2d):
            kinds["bn"].append((name, m))
        elif isinstance(m, nn.Linear):
            kinds["dense"].append((name, m))
    return kinds


def _to_torch(kind: str, arrays: list[np.ndarray], m: nn.Module) -> dict[str, torch.Tensor]:
    t = [torch.from_numpy(np.ascontiguousarray(a)).float() for a in arrays]
    if kind == "conv":
        out = {"weight": t[0].permute(3, 2, 0, 1)}
        if len(t) > 1:
            out["bias"] = t[1]
    elif kind == "dw":
        k = t[0]  # (kh, kw, in, mult)
        out = {"weight": k.permute(2, 3, 0, 1).reshape(k.shape[2] * k.shape[3], 1, k.shape[0], k.shape[1])}
        if len(t) > 1:
            out["bias"] = t[1]
    elif kind == "bn":
        if len(t) != 4:
            raise CheckpointError("BatchNormalization without scale or center is not supported")
        out = {"weight": t[0], "bias": t[1], "running_mean": t[2], "running_var": t[3]}
    elif kind == "dense":
        out = {"weight": t[0].t(), "bias": t[1]}
    else:  # pragma: no cover
        raise ValueError(kind)
    return out


def keras_preprocessing(name: str, layers: list, config: dict | None, input_size: int, crop_pct: float) -> dict:
    """Mean/std on [0, 1] pixels equivalent to the Keras model's built-in preprocessing."""
    norm = next((a for k, _, a in layers if k == "norm"), None)
    rescale_extra = None
    if config:
        seen_norm = False
        for layer in config.get("config", {}).get("layers", []):
            if layer["class_name"] == "Normalization":
                seen_norm = True
            elif layer["class_name"] == "Rescaling" and seen_norm:
                rescale_extra = np.asarray(layer["config"]["scale"], dtype=np.float64)
    if name.startswith("efficientnetv2_") and not name.startswith("efficientnetv2_b"):
        mean = std = [128.0 / 255.0] * 3  # Rescaling(1/128, offset=-1)
        how = "Rescaling(1/128, offset=-1)"
    elif norm is not None:
        m, v = np.asarray(norm[0], np.float64).reshape(-1), np.asarray(norm[1], np.float64).reshape(-1)
        if rescale_extra is None and np.allclose(v, IMAGENET_STD, atol=1e-6):
            # weights of a model built with weights="imagenet": Keras adds Rescaling(1/sqrt(std))
            rescale_extra = 1.0 / np.sqrt(v)
        std = np.sqrt(np.maximum(v, 0.0))
        if rescale_extra is not None:
            std = std / rescale_extra
        mean, std = m.tolist(), std.tolist()
        how = "Rescaling(1/255) -> Normalization(file)" + (" -> Rescaling(imagenet fix)" if rescale_extra is not None else "")
    elif name.startswith("efficientnetv2_b"):
        mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
        how = "Rescaling(1/255) -> Normalization(ImageNet mean, std^2)"
    else:
        mean, std = [0.0] * 3, [1.0] * 3
        how = "Rescaling(1/255)"
    mean = [float(x) for x in np.broadcast_to(np.asarray(mean, np.float64), (3,))]
    std = [float(x) for x in np.broadcast_to(np.asarray(std, np.float64), (3,))]
    return dict(input_size=input_size, crop_pct=crop_pct, interpolation="bicubic", mean=mean, std=std,
                input_range=[0, 1], keras_preprocessing=how)


def convert_keras(path: str | os.PathLike, name: str | None = None) -> tuple[nn.Module, dict]:
    """Build the effnets model for a Keras EfficientNet weights file and load it.
    Returns (model, info) with ``info["preprocessing"]`` and ``info["mapping"]``."""
    from ..factory import create_model
    data = read_keras_h5(path)
    cfg = data["config"]
    if name is None and cfg:
        name = keras_name_to_effnets(cfg.get("config", {}).get("name", ""))
    if name is None:
        raise ConfigError(f"cannot tell which EfficientNet {path} holds (a .weights.h5 file stores no model name); "
                          "pass the effnets name, e.g. efficientnet_b0 or efficientnetv2_s")
    if keras_name_to_effnets(name) is not None:
        name = keras_name_to_effnets(name)
    if not name.startswith(("efficientnet_b", "efficientnetv2_")) or name in ("efficientnet_b8", "efficientnetv2_xl"):
        raise ConfigError(f"Keras Applications has no {name}; supported: efficientnet_b0..b7, "
                          "efficientnetv2_b0..b3, efficientnetv2_s/m/l")
    layers = data["layers"]
    dense = [a for k, _, a in layers if k == "dense"]
    num_classes = int(dense[-1][0].shape[1]) if dense else 0
    model = create_model(name, num_classes=num_classes, **KERAS_OVERRIDES)
    own = _own_modules(model)
    sd = {}
    mapping = []
    for kind in ("conv", "dw", "bn", "dense"):
        src = [(n, a) for k, n, a in layers if k == kind]
        dst = own[kind]
        if len(src) != len(dst):
            raise CheckpointError(f"{path}: {len(src)} Keras {kind} layers but {name} has {len(dst)}: another "
                                  "architecture or width/depth; nothing was loaded")
        for (sname, arrays), (dname, mod) in zip(src, dst):
            tensors = _to_torch(kind, arrays, mod)
            for pname, t in tensors.items():
                target = getattr(mod, pname)
                if t.shape != target.shape:
                    raise CheckpointError(f"{path}: Keras {sname} {tuple(t.shape)} does not fit {dname}.{pname} "
                                          f"{tuple(target.shape)}; nothing was loaded")
                sd[f"{dname}.{pname}"] = t
            mapping.append((sname, dname))
    missing = [k for k in model.state_dict() if k not in sd and not k.endswith("num_batches_tracked")]
    if missing:
        raise CheckpointError(f"{path}: no Keras weights for {missing[:5]}")
    model.load_state_dict(sd, strict=False)
    card = model.card
    pre = keras_preprocessing(name, layers, cfg, card.test_size, card.crop_pct)
    model.preprocessing = pre
    return model, {"name": name, "preprocessing": pre, "mapping": mapping, "format": data["format"],
                   "num_classes": num_classes}


_KERAS_APP = {"efficientnet_b": "EfficientNetB", "efficientnetv2_b": "EfficientNetV2B", "efficientnetv2_": "EfficientNetV2"}


def keras_app_name(name: str) -> str:
    if name.startswith("efficientnet_b"):
        return "EfficientNetB" + name[-1]
    if name.startswith("efficientnetv2_b"):
        return "EfficientNetV2B" + name[-1]
    return "EfficientNetV2" + name.split("_")[-1].upper()


def keras_parity(model: nn.Module, path: str | os.PathLike, info: dict, size: int | None = None,
                 seed: int = 0) -> list[dict] | None:
    """Per-layer comparison against Keras itself (None when keras is not installed): stem,
    every block and the logits, on one random [0, 255] image."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:
        return None
    name = info["name"]
    app = getattr(keras.applications, keras_app_name(name))
    include_top = info["num_classes"] > 0
    kw = dict(weights=None, include_top=include_top)
    if include_top:
        kw.update(classes=info["num_classes"], classifier_activation=None)
    else:
        kw.update(input_shape=(size or model.card.test_size,) * 2 + (3,))
    km = app(**kw)
    km.load_weights(str(path))
    size = km.input_shape[1] or size or model.card.test_size
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 255, size=(1, size, size, 3)).astype(np.float32)
    # Keras layers at block ends, and our modules
    names = [l.name for l in km.layers]
    prefixes = []
    for n in names:
        m = re.match(r"(block\d+[a-z]+)_", n)
        if m and m.group(1) not in prefixes:
            prefixes.append(m.group(1))
    k_out = ["stem_activation"] + [[n for n in names if n.startswith(p + "_")][-1] for p in prefixes]
    k_out.append("top_activation")
    if include_top:
        k_out.append("predictions")
    probe = keras.Model(km.inputs, [km.get_layer(n).output for n in k_out])
    k_vals = [keras.ops.convert_to_numpy(v) for v in probe(img)]
    blocks = [b for s in model.stages for b in s]
    mods = [("stem", model.stem)] + [(f"block {i}", b) for i, b in enumerate(blocks)] + [("conv_head", model.conv_head)]
    if include_top:
        mods.append(("classifier", model.classifier))
    if len(mods) != len(k_out):
        raise CheckpointError(f"parity: {len(k_out)} Keras probes vs {len(mods)} effnets modules")
    outs = {}
    hooks = [m.register_forward_hook(lambda _m, _i, o, key=key: outs.__setitem__(key, o)) for key, m in mods]
    pre = info["preprocessing"]
    x = torch.from_numpy(img).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    model.eval()
    forward_with_hooks(model, x, hooks)
    report = []
    for (key, _), kname, kv in zip(mods, k_out, k_vals):
        ours = outs[key].numpy()
        ref = kv.transpose(0, 3, 1, 2) if kv.ndim == 4 else kv
        err = float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-12))
        report.append({"source": kname, "effnets": key, "rel_err": err, "shape": list(ours.shape)})
    return report
