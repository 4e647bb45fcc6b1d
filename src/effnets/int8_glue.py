"""Native glue between the int8 ops of a post-training quantized model (``optimize(dtype="int8")``).

torch.ao's FX conversion runs every activation that has no int8 kernel (SiLU, hard-swish,
sigmoid, ...) as dequantize -> float op -> quantize, and a squeeze-excite's product as a
broadcast ``quantized.mul``.  On efficientnet_b0 trained on digits, batch 8, one thread, these
took 160 of the int8 model's 246 ms (PyTorch profiler: SiLU 54, dequantize 50, quantized.mul
33, quantize 22; the int8 convs 46), so the int8 model ran at 0.56x our fp32 one.
:func:`fuse_int8_glue` rewrites the converted graph:

* dequantize -> activation module -> quantize_per_tensor becomes one lookup per byte
  (:func:`quantized_act`): an activation between two 8-bit tensors has only 256 inputs, so a
  256-entry table computed with the very float32 ops PyTorch would run gives the same bytes;
  after a layer kept in float (the stem conv), activation and quantization are one native pass;
* ``quantized.mul`` of a tensor by an (N, C, 1, 1) gate becomes one pass that scales each
  channel (:func:`quantized_gate_mul`), rounding as ``quantize_per_tensor`` does;
* a squeeze-excite's spatial ``mean`` sums the stored bytes (:func:`quantized_mean`) instead of
  dequantizing the tensor first.

They fall back to the original ops where the native kernels are not built or the tensors are
not dense per-tensor quint8, and inside :func:`aten_ops` (the exporters' reference run).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from . import kernels
from .plain_ops import aten_ops, plain_mode

# activation modules whose dequantize -> act -> quantize is replaced by a table
_ACTS = {nn.SiLU: F.silu, nn.Hardswish: F.hardswish, nn.Sigmoid: torch.sigmoid, nn.Hardsigmoid: F.hardsigmoid,
         nn.ReLU6: F.relu6, nn.ReLU: F.relu, nn.GELU: F.gelu, nn.Tanh: torch.tanh}
_BY_NAME = {cls.__name__: fn for cls, fn in _ACTS.items()}
_TABLES: dict = {}  # (act, in scale, in zero point, out scale, out zero point) -> uint8 table



def _table(act: str, in_scale: float, in_zp: int, scale: float, zp: int) -> torch.Tensor:
    key = (act, in_scale, in_zp, scale, zp)
    lut = _TABLES.get(key)
    if lut is None:
        if len(_TABLES) > 4096:  # models re-calibrated over and over: keep the cache bounded
            _TABLES.clear()
        q = torch._make_per_tensor_quantized_tensor(torch.arange(256, dtype=torch.uint8), in_scale, in_zp)
        lut = _TABLES[key] = torch.quantize_per_tensor(_BY_NAME[act](q.dequantize()), scale, zp,
                                                       torch.quint8).int_repr()
    return lut


# the float activations effnets' kernels compute in the quantizing pass (module name -> kernel name)
_FLOAT_NATIVE = {"SiLU": "silu", "ReLU": "relu", "Hardswish": "hardswish", "ReLU6": "relu6"}


def quantized_act(x: torch.Tensor, scale, zero_point, act: str) -> torch.Tensor:
    """``quantize_per_tensor(act(x.dequantize()), scale, zero_point, quint8)`` by table lookup; for
    a float ``x`` (a layer kept in float feeding quantized ones) ``act`` and the quantization in
    one native pass."""
    if plain_mode():  # torch.ao's own ops (effnets.plain_ops)
        return torch.quantize_per_tensor(_BY_NAME[act](x.dequantize() if x.is_quantized else x), scale, zero_point,
                                         torch.quint8)
    scale, zero_point = float(scale), int(zero_point)
    if not x.is_quantized:
        y = kernels.quantize_act(x, _FLOAT_NATIVE[act], scale, zero_point) if act in _FLOAT_NATIVE else None
        return y if y is not None else torch.quantize_per_tensor(_BY_NAME[act](x), scale, zero_point, torch.quint8)
    if x.dtype == torch.quint8 and x.qscheme() == torch.per_tensor_affine:
        y = kernels.quantized_lut(x, _table(act, x.q_scale(), x.q_zero_point(), scale, zero_point), scale,
                                  zero_point)
        if y is not None:
            return y
    return torch.quantize_per_tensor(_BY_NAME[act](x.dequantize()), scale, zero_point, torch.quint8)


def quantized_gate_mul(x: torch.Tensor, gate: torch.Tensor, scale, zero_point) -> torch.Tensor:
    """``quantized.mul(x, gate, scale, zero_point)``, natively where ``gate`` is one value per
    image and channel of a channels-last ``x``."""
    if not plain_mode() and gate.ndim == 4 and x.ndim == 4 and gate.shape[2:] == (1, 1) and gate.shape[:2] == x.shape[:2]:
        g = gate.dequantize() if gate.is_quantized else gate
        y = kernels.quantized_gate_mul(x, g, float(scale), int(zero_point))
        if y is not None:
            return y
    return torch.ops.quantized.mul(x, gate, scale, zero_point)


def quantized_mean(x: torch.Tensor, dim, keepdim: bool = False) -> torch.Tensor:
    """``x.mean(dim, keepdim)``, natively where it is a squeeze-excite's pooling (the spatial dims
    of a channels-last quint8 tensor)."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    if not plain_mode() and x.is_quantized and x.ndim == 4 and tuple(d % 4 for d in dims) == (2, 3):
        y = kernels.quantized_channel_mean(x)
        if y is not None:
            return y if keepdim else y.reshape(x.shape[0], x.shape[1])
    return x.mean(dim, keepdim=keepdim)


def fuse_int8_glue(gm: fx.GraphModule) -> dict[str, int]:
    """Rewrites, in place, the glue of a ``convert_fx`` int8 model as described in the module
    docstring; returns how many activations and gate products were replaced."""
    graph, done = gm.graph, {"activations": 0, "gate_products": 0, "means": 0}
    modules = dict(gm.named_modules())
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.quantize_per_tensor and len(node.args) == 4 \
                and node.args[3] is torch.quint8:
            act = node.args[0]
            if not (isinstance(act, fx.Node) and act.op == "call_module" and len(act.users) == 1
                    and type(modules.get(act.target)) in _ACTS and len(act.args) == 1):
                continue
            deq = act.args[0]  # dequantize -> act -> quantize, or float layer -> act -> quantize
            src = deq.args[0] if (isinstance(deq, fx.Node) and deq.op == "call_method" and deq.target == "dequantize"
                                  and len(deq.users) == 1) else None
            with graph.inserting_before(node):
                new = graph.call_function(quantized_act, (deq if src is None else src, node.args[1], node.args[2],
                                                          type(modules[act.target]).__name__))
            node.replace_all_uses_with(new)
            for dead in (node, act) if src is None else (node, act, deq):
                graph.erase_node(dead)
            done["activations"] += 1
        elif node.op == "call_function" and node.target is torch.ops.quantized.mul and len(node.args) == 4:
            node.target = quantized_gate_mul
            done["gate_products"] += 1
        elif node.op == "call_method" and node.target == "mean" and 2 <= len(node.args) <= 3 \
                and set(node.kwargs) <= {"keepdim"}:
            with graph.inserting_before(node):
                new = graph.call_function(quantized_mean, node.args, dict(node.kwargs))
            node.replace_all_uses_with(new)
            graph.erase_node(node)
            done["means"] += 1
    graph.lint()
    gm.recompile()
    return done


__all__ = ["fuse_int8_glue", "quantized_act", "quantized_gate_mul", "quantized_mean", "aten_ops"]
