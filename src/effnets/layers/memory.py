"""Memory-efficient training layers: recompute cheap intermediates in backward.

In a plain ``conv -> BatchNorm -> act`` autograd keeps three full-size tensors per layer for
the backward pass: the conv output (BN's input), the BN output (the activation's input) and
the activation output (the next layer's input).  The BN output is a per-channel affine map of
the conv output, so it can be recomputed in one cheap elementwise pass in backward instead of
being stored (the idea of In-Place ABN, Rota Bulò et al. 2018, arXiv 1712.02616, and of
gradient checkpointing restricted to cheap ops, Chen et al. 2016, arXiv 1604.06174).
Likewise squeeze-excite keeps only the pre-gate logits (B x C x 1 x 1) and recomputes the
gate, and a transformer MLP (``act_linear``) keeps its first linear's output and recomputes the
activation that its second linear reads.  Depthwise convolutions in ``ConvNormAct`` keep ATen's forward but run their backward
on effnets' native kernels (``depthwise_conv``; CPU float32), since oneDNN's costs ~3.8x its
forward there.

``BatchNormAct`` is an autograd Function doing BN (training statistics, running-stat update
exactly as ``nn.BatchNorm2d``) + activation, saving only the BN input and the per-channel
statistics.  Gradients are those of the plain ops (same ATen backward kernels).

Switch: ``ConvNormAct`` (and ``SqueezeExcite``, the ViT / CoAtNet MLPs) use it when the module
is training, grad is enabled, the global default or the module's own ``memory_efficient``
attribute says so, and
nothing is tracing / scripting / compiling.  In eval, export and compile the plain modules
run, so exported graphs contain standard ops only.  On by default (training only);
``set_memory_efficient(False)`` globally or ``set_memory_efficient(False, model)`` per model.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels

_DEFAULT = True


def set_memory_efficient(enabled: bool, model: nn.Module | None = None) -> None:
    """Global default (``model=None``) or per-model switch for memory-efficient training blocks.
    ``set_memory_efficient(model, flag)`` (model first) is accepted too."""
    global _DEFAULT
    if isinstance(enabled, nn.Module):  # set_memory_efficient(model, flag)
        enabled, model = model, enabled
    if model is None:
        _DEFAULT = bool(enabled)
        return
    for m in model.modules():
        if hasattr(m, "memory_efficient"):
            m.memory_efficient = bool(enabled)


def memory_efficient_enabled() -> bool:
    return _DEFAULT


@contextlib.contextmanager
def memory_efficient(enabled: bool) -> Iterator[None]:
    """Temporarily switch the global default."""
    old = _DEFAULT
    set_memory_efficient(enabled)
    try:
        yield
    finally:
        set_memory_efficient(old)


def use_memory_efficient(module: nn.Module) -> bool:
    if not module.training:  # first: eval modules (an optimized model's) skip the lookup below, whose
        return False         # miss (no such attribute) costs nn.Module.__getattr__'s exception, ~1 us
    flag = getattr(module, "memory_efficient", None)
    on = _DEFAULT if flag is None else flag
    return (on and torch.is_grad_enabled() and not torch.jit.is_scripting()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling())


# -- activations: forward and backward from the activation *input* ---------------------------
def _act_kind(act: nn.Module) -> str | None:
    t = type(act)
    if t is nn.Identity:
        return "identity"
    if t is nn.SiLU:
        return "silu"
    if t is nn.ReLU:
        return "relu"
    if t is nn.ReLU6:
        return "relu6"
    if t is nn.Hardswish:
        return "hardswish"
    if t is nn.GELU:
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return None


def _act_fwd(kind: str, z: torch.Tensor) -> torch.Tensor:
    if kind == "silu":
        return F.silu(z, inplace=True)
    if kind == "relu":
        return F.relu(z, inplace=True)
    if kind == "relu6":
        return F.hardtanh(z, 0.0, 6.0, inplace=True)
    if kind == "hardswish":
        return F.hardswish(z, inplace=True)
    if kind == "gelu":
        return F.gelu(z)
    if kind == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    return z


def _act_bwd(kind: str, g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    aten = torch.ops.aten
    if kind == "silu":
        return aten.silu_backward(g, z)
    if kind == "relu":
        return aten.threshold_backward(g, z, 0)
    if kind == "relu6":
        return aten.hardtanh_backward(g, z, 0.0, 6.0)
    if kind == "hardswish":
        return aten.hardswish_backward(g, z)
    if kind == "gelu":
        return aten.gelu_backward(g, z, approximate="none")
    if kind == "gelu_tanh":
        return aten.gelu_backward(g, z, approximate="tanh")
    return g


class _BatchNormAct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, weight, bias, running_mean, running_var, momentum, eps, kind):
        ctx.native = kernels.supports(y, kind) and _stats_ok(running_mean, running_var)
        if ctx.native:  # two fused passes (statistics; normalise + act), see effnets/kernels
            a, mean, invstd = kernels.bn_act_forward(y, weight, bias, running_mean, running_var, momentum, eps, kind)
        else:
            z, mean, invstd = torch.ops.aten.native_batch_norm(y, weight, bias, running_mean, running_var, True,
                                                               momentum, eps)
            a = _act_fwd(kind, z)  # in place: the BN output is not kept
        ctx.save_for_backward(y, weight, bias, mean, invstd)
        ctx.eps, ctx.kind = eps, kind
        return a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        y, weight, bias, mean, invstd = ctx.saved_tensors
        if ctx.native:
            need_wb = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
            dy, dw, db = kernels.bn_act_backward(g, y, weight, bias, mean, invstd, ctx.kind, need_wb)
            return (dy, dw if ctx.needs_input_grad[1] else None, db if ctx.needs_input_grad[2] else None,
                    None, None, None, None, None)
        shape = (1, -1, 1, 1)
        if ctx.kind != "identity":
            scale = invstd if weight is None else invstd * weight
            shift = -mean * scale if bias is None else bias - mean * scale
            # recomputed BN output, in y's dtype as the forward's was (bf16 / fp16 under autocast,
            # whose fp32 statistics would otherwise promote it and the gradient to fp32)
            z = torch.addcmul(shift.view(shape), y, scale.view(shape)).to(y.dtype)
            g = _act_bwd(ctx.kind, g.to(y.dtype), z)
            del z
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                bias is not None and ctx.needs_input_grad[2]]
        dy, dw, db = torch.ops.aten.native_batch_norm_backward(g.contiguous(memory_format=_fmt(y)), y, weight,
                                                               None, None, mean, invstd, True, ctx.eps, mask)
        return dy, dw, db, None, None, None, None, None


def _stats_ok(*bufs) -> bool:
    return all(b is None or (b.dtype == torch.float32 and b.is_contiguous()) for b in bufs)


def _fmt(t: torch.Tensor):
    return torch.channels_last if (t.ndim == 4 and not t.is_contiguous()
                                   and t.is_contiguous(memory_format=torch.channels_last)) else torch.contiguous_format


def batch_norm_act(y: torch.Tensor, bn: nn.BatchNorm2d, act: nn.Module) -> torch.Tensor | None:
    """Training-mode ``act(bn(y))`` that stores only ``y``; None if ``bn``/``act`` are not
    supported (the caller then runs the plain modules)."""
    kind = _act_kind(act)
    if kind is None or type(bn) is not nn.BatchNorm2d or not bn.training or not bn.track_running_stats:
        return None
    if bn.running_mean is None or y.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return None
    # the running-stat bookkeeping of nn.BatchNorm2d.forward
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            momentum = 1.0 / float(bn.num_batches_tracked)
    return _BatchNormAct.apply(y, bn.weight, bn.bias, bn.running_mean, bn.running_var, momentum, bn.eps, kind)


class _DepthwiseConv(torch.autograd.Function):
    """Depthwise conv whose backward runs effnets' native kernels (forward: oneDNN via F.conv2d).
    Saves what the ATen conv saves (input and weight)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx, dw = kernels.depthwise_backward(dy, x, weight, stride, padding, need_x, need_w)
        db = dy.sum((0, 2, 3)) if need_b and has_bias else None
        return dx, dw, db, None, None


def depthwise_conv(x: torch.Tensor, conv: nn.Module) -> torch.Tensor | None:
    """Training ``conv(x)`` for a depthwise ``nn.Conv2d`` with the native backward (oneDNN's
    depthwise backward costs ~3.8x its forward on B0 here); None where the kernels do not apply
    (the caller then runs ``conv`` itself)."""
    if type(conv) is not nn.Conv2d or not kernels.supports_depthwise(x, conv):
        return None
    return _DepthwiseConv.apply(x, conv.weight, conv.bias, conv.stride[0], tuple(conv.padding))


def _gate_kind(gate: nn.Module) -> str | None:
    t = type(gate)
    return "sigmoid" if t is nn.Sigmoid else "hard_sigmoid" if t is nn.Hardsigmoid else None


def _gate_and_grad(kind: str, s: torch.Tensor, dgate: torch.Tensor | None = None):
    """The gate of logits ``s``; with ``dgate``, the gradient w.r.t. ``s`` instead."""
    if kind == "sigmoid":
        g = torch.sigmoid(s)
        return g if dgate is None else torch.ops.aten.sigmoid_backward(dgate, g)
    return F.hardsigmoid(s) if dgate is None else torch.ops.aten.hardsigmoid_backward(dgate, s)


def _gate_grads(dy: torch.Tensor, x: torch.Tensor, g: torch.Tensor, need_dx: bool, inplace: bool):
    """Gradients of ``x * g`` (``g`` B x C x 1 x 1): ``dy * g`` (None unless ``need_dx``) and the
    B x C x 1 x 1 sums of ``dy * x``; one native pass on CPU channels-last float32 (in place on
    ``dy`` when ``inplace``), else the PyTorch ops."""
    if kernels.supports_gate_backward(dy, x):
        dx, dgate = kernels.gate_backward(dy, x, g, out=dy if inplace else None)
        return (dx if need_dx else None), dgate.view(g.shape).to(g.dtype)
    return (dy * g if need_dx else None), (dy * x).sum((2, 3), keepdim=True)


class _GateMul(torch.autograd.Function):
    """``x * gate(s)`` saving ``x`` and the logits ``s`` (B x C x 1 x 1), not the gate."""

    @staticmethod
    def forward(ctx, x, s, kind):
        ctx.save_for_backward(x, s)
        ctx.kind = kind
        return x * _gate_and_grad(kind, s)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, go):
        x, s = ctx.saved_tensors
        dx, dgate = _gate_grads(go, x, _gate_and_grad(ctx.kind, s), ctx.needs_input_grad[0], inplace=False)
        return dx, _gate_and_grad(ctx.kind, s, dgate), None


class _ChannelMean(torch.autograd.Function):
    """``x.mean((2, 3), keepdim=True)`` whose gradient is the B x C x 1 x 1 output gradient / (H W)
    broadcast as a view: PyTorch's own backward divides the broadcast gradient, which writes a
    full-size tensor that autograd then adds to the input's other gradient (two passes over the
    block's largest tensor instead of one)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.mean((2, 3), keepdim=True)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return (g / (ctx.shape[2] * ctx.shape[3])).expand(ctx.shape)


def channel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-image channel means (B x C x 1 x 1) for memory-efficient training (see _ChannelMean)."""
    return _ChannelMean.apply(x) if x.ndim == 4 and x.requires_grad else x.mean((2, 3), keepdim=True)


def gate_mul(x: torch.Tensor, s: torch.Tensor, gate: nn.Module) -> torch.Tensor | None:
    kind = _gate_kind(gate)
    if kind is None:
        return None
    return _GateMul.apply(x, s, kind)


class _GatedConv(torch.autograd.Function):
    """``conv(x * gate(s))`` saving ``x`` and the logits ``s`` but not the gated tensor, which
    backward recomputes (one per-channel multiply) for the weight gradient."""

    @staticmethod
    def forward(ctx, x, s, weight, bias, stride, padding, dilation, groups, kind):
        g = _gate_and_grad(kind, s)
        y = F.conv2d(x * g, weight, bias, stride, padding, dilation, groups)
        ctx.save_for_backward(x, s, weight)
        ctx.conf = (stride, padding, dilation, groups, kind, bias is not None)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, go):
        x, s, weight = ctx.saved_tensors
        stride, padding, dilation, groups, kind, has_bias = ctx.conf
        g = _gate_and_grad(kind, s)
        need_x, need_s, need_w, need_b = ctx.needs_input_grad[:4]
        dh, dw, db = torch.ops.aten.convolution_backward(
            go, x * g, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding), list(dilation),
            False, [0, 0], groups, [need_x or need_s, need_w, need_b and has_bias])
        dx = ds = None
        if need_x or need_s:  # dh is this function's own buffer: dx may overwrite it
            dx, dgate = _gate_grads(dh, x, g, need_x, inplace=True)
            ds = _gate_and_grad(kind, s, dgate) if need_s else None
        return dx, ds, dw, db if has_bias else None, None, None, None, None, None


class _ActLinear(torch.autograd.Function):
    """``F.linear(act(h), weight, bias)`` saving ``h`` and not ``act(h)``: the activation's output,
    which only the linear's weight gradient reads, is recomputed in backward (one elementwise
    pass).  In a transformer MLP that is one of its two widest saved tensors (B x T x 4C)."""

    @staticmethod
    def forward(ctx, h, weight, bias, kind):
        ctx.save_for_backward(h, weight)
        ctx.kind, ctx.has_bias = kind, bias is not None
        a = kernels.act_out(h, kind) if kind in kernels.DW_ACT_CODES else None  # effnets' vector code
        return F.linear(_act_out(kind, h) if a is None else a, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        # under autocast the forward's product ran in g's dtype (bf16 / fp16) on a cast weight:
        # the products here run in g's dtype too, each gradient returned in its input's dtype
        h, weight = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g2 = g.reshape(-1, g.shape[-1])
        dh = dw = db = a = None
        if need_h:
            da = (g @ weight.to(g.dtype)).to(h.dtype)
            # GELU: its derivative and the recomputed GELU in one native pass
            both = kernels.gelu_backward(da, h, need_w) if ctx.kind == "gelu" else None
            dh, a = both if both is not None else (_act_bwd(ctx.kind, da, h), None)
        if need_w:
            a = _act_out(ctx.kind, h) if a is None else a
            dw = (g2.t() @ a.reshape(-1, h.shape[-1]).to(g.dtype)).to(weight.dtype)
        if need_b and ctx.has_bias:
            db = g2.sum(0).to(weight.dtype)
        return dh, dw, db, None


def _act_out(kind: str, z: torch.Tensor) -> torch.Tensor:
    """``act(z)`` as a new tensor (``_act_fwd`` may overwrite ``z``)."""
    return _act_fwd(kind, z) if kind in ("gelu", "gelu_tanh", "identity") else _act_fwd(kind, z.clone())


def act_linear(h: torch.Tensor, act: nn.Module, linear: nn.Module, owner: nn.Module) -> torch.Tensor:
    """``linear(act(h))`` (a transformer MLP's activation and second linear).  In memory-efficient
    training (``owner``'s switch) the activation's output is not stored but recomputed in
    backward (:class:`_ActLinear`); elsewhere, or for layers it does not know, the modules."""
    kind = _act_kind(act) if use_memory_efficient(owner) and type(linear) is nn.Linear else None
    if kind is None or kind == "identity":
        return linear(act(h))
    return _ActLinear.apply(h, linear.weight, linear.bias, kind)


def expand_conv_dw(x: torch.Tensor, expand: nn.Module | None, dw: nn.Module) -> torch.Tensor:
    """``dw(expand(x))`` (an inverted-residual block's expand and depthwise convs; ``expand``
    None: ``dw(x)``).  In an ``effnets.optimize``d model the two run as one pass where they can
    (``FusedConvAct.forward_expanded``, looked up on the class), else as the modules."""
    if expand is None:
        return dw(x)
    fused = getattr(type(dw), "forward_expanded", None)
    y = fused(dw, x, expand) if fused is not None else None
    return dw(expand(x)) if y is None else y


def conv_project(x: torch.Tensor, conv: nn.Module, project: nn.Module,
                 shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``project(conv(x))`` (``+ shortcut``: given only in an ``effnets.optimize``d model's eval
    blocks): a Fused-MBConv block's expand and project convs.  In an optimized model the two run
    as one pass where they can (``FusedConvAct.forward_projected``, looked up on the class), else
    as the modules."""
    fused = getattr(type(conv), "forward_projected", None)
    y = fused(conv, x, project, shortcut) if fused is not None else None
    if y is not None:
        return y
    return se_conv(conv(x), None, project, shortcut)


def se_conv(x: torch.Tensor, se: nn.Module | None, cna: nn.Module,
            shortcut: torch.Tensor | None = None) -> torch.Tensor:
    """``cna(se(x))`` (squeeze-excite, then a ConvNormAct).  In memory-efficient training the
    gated tensor ``se(x)``, which only the conv's weight gradient needs, is not stored: the
    conv saves ``x`` (kept anyway) and the B x C x 1 x 1 SE logits and recomputes the product.
    ``shortcut``: ``cna(se(x)) + shortcut``, given only in an ``effnets.optimize``d model's eval
    blocks, whose 1x1 conv adds it in its GEMM's epilogue (``FusedConvAct.forward_residual``)."""
    if shortcut is not None:
        return cna.forward_residual(x, se, shortcut)
    if se is None:
        return cna(x)
    if not (use_memory_efficient(se) and use_memory_efficient(cna)):  # eval, export, compile: plain modules
        # effnets.optimize: the SE product folded into the conv (looked up on the class: a missing
        # attribute on the module would cost nn.Module.__getattr__'s exception)
        gated = getattr(type(cna), "forward_gated", None)
        y = gated(cna, x, se) if gated is not None else None
        return cna(se(x)) if y is None else y
    conv, kind = getattr(cna, "conv", None), _gate_kind(getattr(se, "gate", None))
    if (kind is None or type(conv) is not nn.Conv2d or conv.padding_mode != "zeros" or isinstance(conv.padding, str)
            or not hasattr(se, "logits") or not hasattr(cna, "norm_act")):
        return cna(se(x))
    y = _GatedConv.apply(x, se.logits(x), conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation,
                         conv.groups, kind)
    return cna.norm_act(y)


__all__ = ["set_memory_efficient", "memory_efficient_enabled", "memory_efficient", "use_memory_efficient", "act_linear",
           "batch_norm_act", "channel_mean", "gate_mul", "expand_conv_dw", "conv_project", "se_conv",
           "depthwise_conv"]


# -- activation checkpointing ------------------------------------------------------------------
@contextlib.contextmanager
def _frozen_bn_stats(module: nn.Module) -> Iterator[None]:
    """Recompute pass: BN still normalises with batch statistics, but its running statistics
    and batch counter are not updated a second time (momentum 0, counter restored)."""
    saved = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom, n in saved:
            m.momentum = mom
            if n is not None:
                m.num_batches_tracked.copy_(n)


def checkpoint_module(module: nn.Module, *args):
    """Run ``module(*args)`` keeping only its inputs for backward; the forward is recomputed
    in backward (non-reentrant ``torch.utils.checkpoint``, RNG state restored so dropout and
    stochastic depth draw the same masks).  BatchNorm running statistics are updated once, in
    the real forward pass, not again in the recompute."""
    from torch.utils.checkpoint import checkpoint
    calls = [0]

    def run(*a):
        calls[0] += 1
        if calls[0] == 1:
            return module(*a)
        with _frozen_bn_stats(module):
            return module(*a)

    return checkpoint(run, *args, use_reentrant=False, preserve_rng_state=True)


def checkpoint_enabled(module: nn.Module) -> bool:
    return (getattr(module, "grad_checkpointing", False) and module.training and torch.is_grad_enabled()
            and not torch.jit.is_scripting() and not torch.jit.is_tracing())


__all__ += ["checkpoint_module", "checkpoint_enabled"]
