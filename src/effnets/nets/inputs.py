"""A cheap check of what a model's ``forward`` is given, so a wrong input fails with one clear
``InputError`` (what is wrong, what would be right) instead of a message from deep inside a
convolution.  Skipped while tracing, scripting, compiling or exporting: the checks are for
eager calls and must not add guards to exported graphs."""
from __future__ import annotations

import torch

from ..errors import InputError


def _skip(x) -> bool:
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    comp = getattr(torch, "compiler", None)
    if comp is not None and (comp.is_compiling() or getattr(comp, "is_exporting", lambda: False)()):
        return True
    return isinstance(x, torch.fx.Proxy)


@torch.jit.ignore
def check_input(model, x, *, multiple: int = 1, min_size: int = 1, allow_empty: bool = True) -> None:
    """``x`` must be a floating-point (N, in_chans, H, W) tensor with H, W >= ``min_size`` and
    multiples of ``multiple``."""
    if _skip(x):
        return
    name = getattr(model, "name", None) or type(model).__name__
    c = int(getattr(model, "in_chans", 3))
    want = f"a float tensor shaped (N, {c}, H, W)"
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} expects {want}, got a {type(x).__module__}.{type(x).__name__}; turn images into "
                         "tensors with effnets.data.eval_transform_from_card(model.card)")
    shape = tuple(x.shape)
    if x.ndim != 4:
        hint = "; add the batch dimension with x.unsqueeze(0)" if x.ndim == 3 else ""
        raise InputError(f"{name} expects {want}, got a {x.ndim}-D tensor of shape {shape}{hint}")
    if shape[1] != c:
        if shape[3] == c:
            hint = "; it looks channels-last (N, H, W, C): use x.permute(0, 3, 1, 2)"
        else:
            hint = (f"; convert the images to {'RGB' if c == 3 else f'{c} channels'}, or create the model with "
                    f"in_chans={shape[1]}")
        raise InputError(f"{name} expects {c} input channels, got {shape[1]} (input shape {shape}){hint}")
    if not x.is_floating_point():
        raise InputError(f"{name} expects a floating-point tensor, got {x.dtype}; use x.float() / 255 and "
                         "normalise with the model card's mean and std")
    if not allow_empty and shape[0] == 0:
        raise InputError(f"{name} got an empty batch (input shape {shape}); pass at least one image")
    h, w = shape[2], shape[3]
    if h < min_size or w < min_size or h % multiple or w % multiple:
        rule = f"at least {min_size}x{min_size}" + (f" and multiples of {multiple}" if multiple > 1 else "")
        fix_h = max(min_size, -(-h // multiple) * multiple)
        fix_w = max(min_size, -(-w // multiple) * multiple)
        raise InputError(f"{name} needs input sizes {rule}, got {h}x{w}; resize or pad to e.g. {fix_h}x{fix_w}")
