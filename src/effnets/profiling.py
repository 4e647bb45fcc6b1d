"""Analytic cost of a model: parameters, MACs, FLOPs and activation memory.

MACs are counted from the real forward pass with module hooks, so depthwise convolutions
(groups), TF "same" padding (the conv sees the padded input) and any input size are counted
right.  Convolutions, linear layers and modules that declare ``profile_macs`` (attention
matmuls) count; normalisation, activations, pooling and additions are not multiply-adds and
are left out, as in the papers.  FLOPs = 2 x MACs.

Activation memory is what one training-mode forward pass keeps for the backward pass: the
bytes of every distinct tensor autograd saves, parameters excluded.  It is what a batch costs
in memory on top of the weights and optimizer state (FLOPs are not speed; params are not memory).
Built from a name, the model lives on the ``meta`` device: no weights are allocated and even
EfficientNet-L2 at 800 px is profiled in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError


@dataclass(frozen=True)
class Profile:
    name: str
    input_size: tuple[int, int]
    batch_size: int
    params: int
    macs: int  # per batch
    activation_bytes: int  # saved for backward, per batch
    param_bytes: int

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def as_dict(self) -> dict:
        return dict(name=self.name, input_size=list(self.input_size), batch_size=self.batch_size,
                    params=self.params, macs=self.macs, flops=self.flops,
                    activation_bytes=self.activation_bytes, param_bytes=self.param_bytes)

    def __str__(self) -> str:
        h, w = self.input_size
        rows = [
            ("model", self.name),
            ("input", f"{self.batch_size}x3x{h}x{w}"),
            ("params", f"{self.params:,} ({self.params / 1e6:.2f} M, {self.param_bytes / 2**20:.1f} MiB)"),
            ("MACs", f"{self.macs:,} ({self.macs / 1e9:.3f} G)"),
            ("FLOPs (2 x MACs)", f"{self.flops / 1e9:.3f} G"),
            ("activations (train)", f"{self.activation_bytes / 2**20:.1f} MiB saved for backward"),
        ]
        return "\n".join(f"{k:<20} {v}" for k, v in rows)


def conv_macs(m: nn.Conv2d, out: torch.Tensor) -> int:
    kh, kw = m.kernel_size
    return out.numel() * (m.in_channels // m.groups) * kh * kw


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of one forward pass of ``model`` on ``x`` (hooks on the real modules)."""
    total = 0

    def hook(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += conv_macs(m, out)
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features
        elif hasattr(m, "profile_macs"):
            total += int(m.profile_macs(inputs, out))

    forward_with_hooks(model, x, [m.register_forward_hook(hook) for m in model.modules()
                                  if isinstance(m, (nn.Conv2d, nn.Linear)) or hasattr(m, "profile_macs")])
    return total


def forward_with_hooks(model: nn.Module, x: torch.Tensor, handles: list) -> torch.Tensor:
    """``model(x)`` without gradients, the hook ``handles`` removed afterwards even if it raises
    (for passes that only observe the model through hooks)."""
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in handles:
            h.remove()


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training-mode forward (parameters excluded).
    BN running statistics are restored afterwards."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if s._cdata not in params:
            seen[s._cdata] = s.nbytes()
        return t

    buffers = {k: v.clone() for k, v in model.named_buffers()}  # BN statistics: restored below
    was_training = model.training
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            model(x.requires_grad_(False))
    finally:
        model.train(was_training)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
    return sum(seen.values())


def profile(model_or_name: nn.Module | str, input_size: int | tuple[int, int] | None = None,
            batch_size: int = 1, **overrides) -> Profile:
    """Params, MACs, FLOPs and training activation memory for a model or a registered name
    (``overrides`` go to create_model).  ``input_size`` defaults to the model card's test size."""
    from .factory import create_model
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(model_or_name, str):
        with torch.device("meta"):
            model = create_model(model_or_name, **overrides)
        name = model_or_name
    elif isinstance(model_or_name, nn.Module):
        if overrides:
            raise ConfigError("overrides apply only when profiling a model by name")
        model = model_or_name
        name = getattr(model, "name", model.__class__.__name__)
    else:
        raise ConfigError(f"profile takes a model or a registered name, got {type(model_or_name).__name__}")
    if input_size is None:
        card = getattr(model, "card", None)
        input_size = card.test_size if card is not None else 224
    hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ConfigError(f"input_size must be a positive int or (height, width), got {input_size!r}")
    p = next(model.parameters())
    in_chans = getattr(model, "in_chans", 3)
    x = torch.zeros(batch_size, in_chans, *hw, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        macs = count_macs(model, x)
    finally:
        model.train(was_training)
    act = saved_activation_bytes(model, x)
    params = sum(q.numel() for q in model.parameters())
    return Profile(name=name, input_size=hw, batch_size=batch_size, params=params, macs=macs,
                   activation_bytes=act, param_bytes=sum(q.numel() * q.element_size() for q in model.parameters()))


__all__ = ["Profile", "profile", "count_macs", "saved_activation_bytes"]
