"""``effnets.optimize``: make a model fast for inference without changing what it computes.

What it does, in order (each step keeps fp32 outputs within rel. error 1e-4 of the original):

1. **Fold BatchNorm into the preceding convolution** (eval BN is an affine map per channel:
   ``w' = w * g / sqrt(v + eps)``, ``b' = beta - m * g / sqrt(v + eps)``; Jacob et al. 2018,
   arXiv 1712.05877 §3.2, and every inference engine since).
2. **Fuse the activation into the convolution**: on CPU the folded conv, its bias and the
   activation (ReLU, ReLU6, hard-swish, GELU, sigmoid, ...) run as one oneDNN primitive
   (``torch.ops.mkldnn._convolution_pointwise``, the op TorchInductor itself emits for conv +
   pointwise fusion), so the activation is applied while the output tile is still in cache
   instead of in a separate memory-bound pass.  SiLU is the exception where effnets' native
   kernels are available (``effnets.kernels``): its exp dominates, and ours costs half of
   oneDNN's, so the conv runs without post-op and SiLU follows in place.  Depthwise convs run
   on effnets' native kernel with bias and activation fused, and hand the channel sums of
   their output to the squeeze-excite that follows (no separate pooling pass).  Elsewhere (CUDA,
   other dtypes, under ``torch.compile``/export) the same module runs plain ``F.conv2d`` + activation.
3. **Squeeze-excite on vectors**: the two 1x1 convolutions on a 1x1 map become matrix products,
   and under ``torch.inference_mode`` the gate multiplies its input in place (the input is
   the block's own conv output; a forward hook on that conv sees the gated values), the whole
   squeeze-excite as one native call where the kernels are built (``kernels.se_gate_``).
   ResNet-RS blocks hand their squeeze-excite the shortcut: pooling, gate, product, sum and ReLU
   in one native call (two passes over the block output instead of five).
4. **Winograd F(4x4, 3x3)** (Lavin & Gray 2016, arXiv 1509.09308) for 3x3 stride-1 dense convs
   (``kernels.winograd_conv3x3_fused``: transforms and the 36 products per block of tiles, in
   cache, the products on the 1x1 GEMM's tiles; or ``kernels.winograd_conv3x3``: native
   transforms, ``torch.bmm`` for the products; bias and activation in the output transform): a
   quarter of the multiplies, so ResNet-RS and EfficientNetV2's Fused-MBConv stages run ~1.5-2x
   faster per conv.  Each layer times the three ways once per input shape and keeps the fastest,
   which makes the first call per shape slower (V2-S batch 8: ~5 s instead of ~1.3 s)
   (``EFFNETS_WINOGRAD=1``/``0``: always/never);
   float32 error ~4e-6 relative per conv, a few times direct convolution's.
5. **1x1 convs on effnets' GEMM** (``kernels.pointwise_conv``: bias, activation, SiLU included,
   in the epilogue while the tile is in registers) where it times faster than oneDNN for the
   layer and input shape (``EFFNETS_NO_NATIVE_PW=1``: never), and **kept output buffers** for
   the convs whose output only the next conv of the same block reads, reused when nothing else
   references them (no fresh pages to fault in each call; ``EFFNETS_NO_REUSE=1``: off).
6. **channels_last** weights and inputs (NHWC is oneDNN's and cuDNN's native layout, and
   depthwise convolutions are much faster in it); conv weights **prepacked** once per input
   shape into the blocked layout oneDNN picks for it, instead of reordered on every call.
7. Optionally **torch.compile** (Inductor, with weight freezing for inference; each fused conv
   stays one opaque ``effnets::conv2d_act`` op, a depthwise conv and its squeeze-excite one
   ``effnets::dw_conv_se`` op), **bf16** weights and activations, **int8** post-training
   quantization calibrated on images (``dtype="int8"``, see :func:`quantize_int8`), or int8
   1x1 convs with per-pixel dynamic activation ranges (``dtype="int8_dynamic"``,
   :func:`quantize_dynamic`), or bf16 operands in the 1x1 convs and linear layers with fp32
   sums and fp32 activations (``dtype="bf16_mixed"``, :func:`quantize_bf16`).

The original model is left untouched: ``optimize`` works on a deep copy.  Parameter names
change (``conv``/``bn`` pairs become one ``weight``/``bias``), so load checkpoints before
optimizing.  Training is not supported on the optimized copy (BN is gone); for training
speed and memory see ``effnets.layers.memory`` and ``model.set_grad_checkpointing``.
"""
from __future__ import annotations

import copy
import functools
import os
import sys
import time
import warnings
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks  # the global hook registries

from . import kernels
from .blocks.mbconv import FusedMBConv, MBConv, inplace_ok
from .errors import ConfigError
from .int8_glue import fuse_int8_glue
from .layers.conv import Conv2dSame, ConvNormAct
from .layers.padding import pad_same
from .layers.se import SqueezeExcite
from .plain_ops import plain_mode as _plain_mode  # module global: tests may patch it
from .profiling import forward_with_hooks

try:  # page-fault counts (FusedConvAct._count_faults); not on Windows
    import resource
except ImportError:  # pragma: no cover
    resource = None


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


# activation module type -> (oneDNN post-op name, scalars, algorithm, plain function)
_ACT_POSTOPS: dict[type, tuple[str, list, str, Callable]] = {
    nn.Identity: ("none", [], "", _identity),
    nn.ReLU: ("relu", [], "", F.relu),
    nn.ReLU6: ("hardtanh", [0.0, 6.0], "", F.relu6),
    nn.SiLU: ("swish", [], "", F.silu),
    nn.Hardswish: ("hardswish", [], "", F.hardswish),
    nn.Hardsigmoid: ("hardsigmoid", [], "", F.hardsigmoid),
    nn.Sigmoid: ("sigmoid", [], "", torch.sigmoid),
}


def _postop(act: nn.Module | None):
    """(attr, scalars, algorithm, fn) for a fusable activation module, else None."""
    if act is None:
        return _ACT_POSTOPS[nn.Identity]
    if type(act) is nn.GELU:
        alg = act.approximate
        return ("gelu", [], alg, functools.partial(F.gelu, approximate=alg))  # a partial pickles
    return _ACT_POSTOPS.get(type(act))


def _mkldnn_ok() -> bool:
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
            and os.environ.get("EFFNETS_NO_MKLDNN_FUSION", "0") != "1")


_MKLDNN = _mkldnn_ok()
# reorder conv weights once per input shape into oneDNN's blocked layout (EFFNETS_NO_PREPACK=1: off)
_PREPACK = (_MKLDNN and hasattr(torch.ops.mkldnn, "_reorder_convolution_weight")
            and os.environ.get("EFFNETS_NO_PREPACK", "0") != "1")
_PACK_SHAPES = 4
# depthwise convs on effnets' native kernel (EFFNETS_NO_NATIVE_DW=1: oneDNN's, for comparison)
_NATIVE_DW = os.environ.get("EFFNETS_NO_NATIVE_DW", "0") != "1"
# 3x3 stride-1 convs by Winograd where it times faster ("auto"), always ("1") or never ("0")
_WINOGRAD = os.environ.get("EFFNETS_WINOGRAD", "auto")
# 1x1 convs on effnets' native GEMM (EFFNETS_NO_NATIVE_PW=1: oneDNN's, for comparison)
_NATIVE_PW = os.environ.get("EFFNETS_NO_NATIVE_PW", "0") != "1"
# other dense convs (stems, stride-2 3x3) on the GEMM over gathered patches where they time faster
# (EFFNETS_NO_NATIVE_CONV=1: oneDNN's, for comparison)
_NATIVE_CONV = os.environ.get("EFFNETS_NO_NATIVE_CONV", "0") != "1"
# block-internal outputs written into buffers kept from the previous call (EFFNETS_NO_REUSE=1: off)
_REUSE = os.environ.get("EFFNETS_NO_REUSE", "0") != "1"
# an inverted-residual block's expand and depthwise convs as one pass where it times faster
# (EFFNETS_NO_FUSE_EXPAND=1: always apart, for comparison)
_FUSE_EXPAND = os.environ.get("EFFNETS_NO_FUSE_EXPAND", "0") != "1"

try:  # oneDNN bf16 convolutions need AVX512-BF16/AVX-NE-CONVERT or AVX512BW/VL/DQ
    _MKLDNN_BF16 = _MKLDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
except (AttributeError, RuntimeError):
    _MKLDNN_BF16 = False


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` followed by eval-mode ``bn``, computed in float64."""
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                              device=w.device)
    if bn.running_var is None or bn.running_mean is None:
        raise ConfigError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    inv = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    g = bn.weight.detach().double() * inv if bn.weight is not None else inv
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(g)
    w = w * g.reshape(-1, 1, 1, 1)
    b = (b - bn.running_mean.detach().double()) * g + beta
    dtype = conv.weight.dtype
    return w.to(dtype), b.to(dtype)


def _pack_for(cache: dict, w: torch.Tensor, shape, padding, stride, dilation, groups) -> torch.Tensor:
    """``w`` in oneDNN's blocked layout for inputs of ``shape``, from/into ``cache``
    (at most ``_PACK_SHAPES`` shapes, oldest dropped first)."""
    key = tuple(shape)
    packed = cache.get(key)
    if packed is None:
        shapes = [k for k in cache if isinstance(k, tuple)]  # other keys: taps, Winograd forms
        if len(shapes) >= _PACK_SHAPES:
            cache.pop(shapes[0])
        packed = cache[key] = torch.ops.mkldnn._reorder_convolution_weight(w, padding, stride, dilation, groups,
                                                                           list(key))
    return packed


def _onednn_conv_act(x, w, bias, padding, stride, dilation, groups, attr, scalars, algorithm) -> torch.Tensor:
    """Conv + bias + activation on oneDNN; SiLU by effnets' native kernel when it is built."""
    if attr == "swish" and x.dtype == torch.float32 and kernels.library() is not None:
        # oneDNN's fused swish costs about what a separate pass of torch.sigmoid does;
        # effnets' vector exp is ~2x cheaper (effnets/kernels), so apply it after the conv
        y = torch.ops.mkldnn._convolution_pointwise(x, w, bias, padding, stride, dilation, groups, "none", [], "")
        return kernels.silu_(y)
    return torch.ops.mkldnn._convolution_pointwise(x, w, bias, padding, stride, dilation, groups, attr, scalars,
                                                   algorithm)


def _native_act(attr: str, scalars, algorithm: str | None = None) -> str | None:
    """The oneDNN post-op as a ``kernels.DW_ACT_CODES`` name, or None if the native kernels lack it.
    GELU only where the caller passes its ``algorithm`` and it is the exact (erf) one: the kernels
    have no tanh form."""
    if attr == "hardtanh":
        return "relu6" if [float(v) for v in scalars] == [0.0, 6.0] else None
    if attr == "gelu":
        return "gelu" if algorithm == "none" else None
    return {"none": "identity", "swish": "silu", "relu": "relu", "hardswish": "hardswish"}.get(attr)


def _native_dw_act(weight_shape, groups: int, stride, dilation, attr: str, scalars,
                   algorithm: str | None = None) -> str | None:
    """The activation name for effnets' native depthwise kernel (``kernels.DW_ACT_CODES``) when a
    conv of this weight shape, grouping and post-op can run on it, else None."""
    c_out, c_in_per_group, kh, kw = weight_shape
    if not (_NATIVE_DW and groups == c_out and c_in_per_group == 1 and kh == kw <= 11 and stride[0] == stride[1]
            and list(dilation) == [1, 1]):
        return None
    return _native_act(attr, scalars, algorithm)


def _pointwise_act(weight_shape, groups: int, stride, padding, attr: str, scalars,
                   algorithm: str | None = None) -> str | None:
    """The activation name when a conv of this shape may run on effnets' native GEMM
    (``kernels.pointwise_conv``: 1x1, stride 1, no padding or grouping), else None."""
    if not (_NATIVE_PW and kernels.pointwise_available()):
        return None
    return _gemm_act(weight_shape, groups, stride, padding, attr, scalars, algorithm)


def _gemm_act(weight_shape, groups: int, stride, padding, attr: str, scalars,
              algorithm: str | None = None) -> str | None:
    """The activation name when a conv is a GEMM (1x1, stride 1, no padding or grouping) with an
    activation the native epilogues have, else None: the int8 GEMM's test (its plain C and
    PyTorch paths need neither AVX2 nor the compiled kernels)."""
    if not (groups == 1 and tuple(weight_shape[2:]) == (1, 1) and list(stride) == [1, 1] and list(padding) == [0, 0]):
        return None
    return _native_act(attr, scalars, algorithm)


def _dense_act(weight_shape, groups: int, stride, dilation, attr: str, scalars,
               algorithm: str | None = None) -> str | None:
    """The activation name when a dense conv (no grouping or dilation, one stride for both axes)
    may run on effnets' patch GEMM (``kernels.conv_forward``), else None."""
    if not (_NATIVE_CONV and kernels.pointwise_available() and groups == 1 and stride[0] == stride[1]
            and list(dilation) == [1, 1]):
        return None
    return _native_act(attr, scalars, algorithm)


def _sole_owner(buf: torch.Tensor, holders: int) -> bool:
    """True when nothing but the caller's ``holders`` Python references (and no view or storage
    handle) reaches ``buf``, so writing over it cannot change a tensor anyone else can see."""
    try:
        storage_refs = torch._C._storage_Use_Count(buf.untyped_storage()._cdata)
    except (AttributeError, RuntimeError):  # private API gone: never reuse
        return False
    # + 2: this function's parameter and getrefcount's argument; storage: + 1 for the handle above
    return sys.getrefcount(buf) <= holders + 2 and storage_refs <= 2


def _winograd_act(weight_shape, groups: int, stride, dilation, attr: str, scalars,
                  algorithm: str | None = None) -> str | None:
    """The activation name when a conv of this shape may run as Winograd F(4x4, 3x3)
    (``kernels.winograd_conv3x3``: 3x3, stride 1, no dilation or grouping, channels multiples
    of 8), else None."""
    c_out, c_in, kh, kw = weight_shape
    if not (_WINOGRAD != "0" and groups == 1 and (kh, kw) == (3, 3) and list(stride) == [1, 1]
            and list(dilation) == [1, 1] and c_in % 8 == 0 and c_out % 8 == 0 and kernels.winograd_available()):
        return None
    return _native_act(attr, scalars, algorithm)


def _faster(a: Callable[[], object], b: Callable[[], object], runs: int = 3) -> bool:
    """True when ``a`` ran faster than ``b`` by 5% or more (best of ``runs``, alternated, after
    one warm-up call each).  Where a library conv allocates a fresh output and ours writes into
    a kept buffer, the loop sees that as it is for outputs above glibc's mmap ceiling (32 MiB:
    mapped afresh, their pages faulted in, on every call of the loop too); below it the block
    freed a moment before comes back, which in the model it may not (``FusedConvAct._count_faults``)."""
    a(), b()
    ta = tb = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        a()
        ta = min(ta, time.perf_counter() - t)
        t = time.perf_counter()
        b()
        tb = min(tb, time.perf_counter() - t)
    return ta < 0.95 * tb


def _best_time(f: Callable[[], object], best: list[float]) -> Callable[[], object]:
    """``f``, keeping its fastest call's seconds in ``best[0]``."""
    def timed():
        t = time.perf_counter()
        out = f()
        best[0] = min(best[0], time.perf_counter() - t)
        return out
    return timed


_FAULT_COST: list[float] = []


def _page_fault_cost() -> float:
    """Seconds one page fault costs: the first write to fresh pages against a write to mapped ones
    (measured once per process).  A 40 MiB anonymous ``mmap`` (fresh pages, whatever the
    allocator would reuse) is filled, then filled again; the fastest fresh fill less the fastest
    warm fill of 5 rounds (taking each minimum apart, so one preempted fill cannot cancel the
    faults' cost), divided by the faults ``getrusage`` counted in one fresh fill (20 where the
    kernel maps 2 MiB huge pages, 10240 with 4 KiB pages; 0.62-0.82 us each on the development
    machine, up to 1.8 us with both cores busy).  Zero where fresh pages cost nothing measurable."""
    if not _FAULT_COST:
        import mmap
        n = 40 << 20
        fresh, warm, faults = [], [], []
        for _ in range(5):
            area = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # as malloc maps
            buf = torch.frombuffer(area, dtype=torch.float32)
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt if resource else 0
            t = time.perf_counter()
            buf.fill_(1.0)
            t1 = time.perf_counter()
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0 if resource else n // 4096)
            buf.fill_(2.0)
            fresh.append(t1 - t)
            warm.append(time.perf_counter() - t1)
            del buf
            area.close()
        _FAULT_COST.append(max(min(fresh) - min(warm), 0.0) / max(min(faults), 1))
    return _FAULT_COST[0]


def _conv3x3(cache: dict, x, weight, bias, padding, act: str, direct: Callable[[], torch.Tensor],
             out: Callable[[], torch.Tensor | None] = lambda: None) -> torch.Tensor:
    """A 3x3 stride-1 conv by Winograd F(4x4, 3x3) or by ``direct()``, whichever ran faster for
    this input shape.  Winograd does a quarter of the multiplies but its transforms move
    memory, so it wins on large maps with moderate channels (ResNet-RS and EfficientNetV2 early
    stages: ~1.3-2x) and loses on 5x5 maps with 512 channels; timing it once per layer and
    input shape (as ``cudnn.benchmark`` does) decides by the machine, not a rule of thumb.
    Winograd itself runs one of two ways, also timed: the fused kernel
    (``kernels.winograd_conv3x3_fused``: transforms and products per block of tiles, in cache;
    1.05-1.3x on the layers above) or transforms + ``torch.bmm`` (``winograd_conv3x3``: better
    where the 36 C_in x C_out matrices are large and the tiles few).  ``cache`` holds the choices
    (shape -> Winograd or not, ("fused", shape) -> which Winograd) and the transformed weights
    each chosen route needs (4x the weight's size each: ``"u"`` for bmm, ``"up"`` for fused;
    dropped when no shape uses them) (``EFFNETS_WINOGRAD=1``: always Winograd, ``0``: never).
    ``out()``: a buffer for Winograd's output, or None."""
    key = tuple(x.shape)
    choice = cache.get(key)
    if choice is False:
        return direct()
    pad = tuple(padding)

    def held(name: str, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        w = cache.get(name)
        if w is None:
            w = cache[name] = make()
        return w

    def u() -> torch.Tensor:  # G g G^T; the fused route's panels are made from it too (pruned below)
        return held("u", lambda: kernels.winograd_weight(weight))

    def bmm() -> torch.Tensor:
        return kernels.winograd_conv3x3(x, u(), bias, pad, act, out=out())

    def fused() -> torch.Tensor:
        up = held("up", lambda: kernels.winograd_panels(u()))
        return kernels.winograd_conv3x3_fused(x, up, bias, pad, act, out=out())

    if choice is None:
        wino = fused if bias is not None and _faster(fused, bmm) else bmm
        choice = cache[key] = _WINOGRAD == "1" or _faster(wino, direct)
        cache[("fused", key)] = wino is fused
        routes = {cache.get(("fused", k)) for k, v in cache.items() if v is True and k and isinstance(k[0], int)}
        if True not in routes:
            cache.pop("up", None)
        if False not in routes:
            cache.pop("u", None)
    if not choice:
        return direct()
    return fused() if cache.get(("fused", key)) else bmm()


def _native_graph_ok(x: torch.Tensor, w: torch.Tensor) -> bool:
    return _MKLDNN and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32


# Under optimize(compile=True) each fused conv is this one opaque op: Inductor fuses and
# schedules the glue (squeeze-excite, residual adds, pooling) and removes the Python overhead,
# while the conv keeps effnets' prepacked weights and native SiLU, which beat the conv + swish
# Inductor emits itself (B0 batch 8: eager optimize 44.5 img/s, Inductor's own lowering 34.6).
_GRAPH_PACKS = torch.utils.weak.WeakIdKeyDictionary()  # weight -> (version tag, {input shape: packed})


_LIB = torch.library.Library("effnets", "DEF")  # plain Library: ~50 us less per call than custom_op
_LIB.define("conv2d_act(Tensor x, Tensor weight, Tensor bias, int[] padding, int[] stride, int[] dilation, "
            "int groups, str attr, float[] scalars, str algorithm) -> Tensor")


def _graph_cache(weight: torch.Tensor) -> dict:
    """Per-weight cache of packed forms, emptied when the weight changes (new tensor or in place)."""
    tag = (weight.data_ptr(), 0 if weight.is_inference() else weight._version)
    entry = _GRAPH_PACKS.get(weight)
    if entry is None or entry[0] != tag:
        entry = _GRAPH_PACKS[weight] = (tag, {})
    return entry[1]


def _graph_taps(weight: torch.Tensor) -> torch.Tensor:
    """The depthwise weight as the native kernel's tap table, made once per weight version."""
    cache = _graph_cache(weight)
    taps = cache.get("taps")
    if taps is None:
        taps = cache["taps"] = kernels.depthwise_taps(weight)
    return taps


def _conv2d_act_op(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
    x = x.contiguous(memory_format=torch.channels_last)
    cacheable = not weight.requires_grad
    dw_act = _native_dw_act(weight.shape, groups, stride, dilation, attr, scalars, algorithm)
    if dw_act is not None and kernels.library() is not None:
        taps = _graph_taps(weight) if cacheable else kernels.depthwise_taps(weight)
        return kernels.depthwise_forward(x, taps, bias, stride[0], tuple(padding), dw_act)[0]
    w = weight
    if _PREPACK and cacheable:
        w = _pack_for(_graph_cache(weight), weight, x.shape, padding, stride, dilation, groups)
    wino_act = _winograd_act(weight.shape, groups, stride, dilation, attr, scalars, algorithm) if cacheable else None
    if wino_act is not None:
        direct = functools.partial(_onednn_conv_act, x, w, bias, padding, stride, dilation, groups, attr, scalars,
                                   algorithm)
        return _conv3x3(_graph_cache(weight).setdefault("winograd", {}), x, weight, bias, padding, wino_act, direct)
    return _onednn_conv_act(x, w, bias, padding, stride, dilation, groups, attr, scalars, algorithm)


_LIB.impl("conv2d_act", _conv2d_act_op, "CPU")


@torch.library.register_fake("effnets::conv2d_act")
def _conv2d_act_fake(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
    n, _, h, wd = x.shape
    kh, kw = weight.shape[2:]
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return x.new_empty((n, weight.shape[0], oh, ow)).contiguous(memory_format=torch.channels_last)


# Depthwise conv + activation + the squeeze-excite that follows it, as one opaque op in the
# compiled graph: the native kernel takes the squeeze's channel sums while each output row is in
# cache and the gate multiplies the fresh output in place, as in eager mode (Inductor's own
# mean + multiply are two more passes over the block's largest tensor and a new buffer).
_SE_FNS: dict[type, tuple[str, Callable]] = {nn.SiLU: ("silu", F.silu), nn.ReLU: ("relu", F.relu),
                                             nn.Sigmoid: ("sigmoid", torch.sigmoid),
                                             nn.Hardsigmoid: ("hardsigmoid", F.hardsigmoid),
                                             nn.Hardswish: ("hardswish", F.hardswish)}
_SE_BY_NAME = {name: fn for name, fn in _SE_FNS.values()}
_LIB.define("dw_conv_se(Tensor x, Tensor weight, Tensor bias, int[] padding, int stride, str act, Tensor w1, "
            "Tensor b1, Tensor w2, Tensor b2, str se_act, str se_gate) -> Tensor")


def _dw_conv_se_op(x, weight, bias, padding, stride, act, w1, b1, w2, b2, se_act, se_gate):
    y, sums = kernels.depthwise_forward(x, _graph_taps(weight), bias, stride, tuple(padding), act, channel_sums=True)
    mean = sums / (y.shape[2] * y.shape[3])
    if se_act in kernels.SE_ACT_CODES and se_gate in kernels.SE_ACT_CODES:
        return kernels.se_gate_(y, mean, w1, b1, w2, b2, se_act, se_gate)
    return _se_apply(y, mean, w1, b1, w2, b2, _SE_BY_NAME[se_act], _SE_BY_NAME[se_gate], inplace=True)


_LIB.impl("dw_conv_se", _dw_conv_se_op, "CPU")


@torch.library.register_fake("effnets::dw_conv_se")
def _dw_conv_se_fake(x, weight, bias, padding, stride, act, w1, b1, w2, b2, se_act, se_gate):
    return _conv2d_act_fake(x, weight, bias, padding, [stride, stride], [1, 1], x.shape[1], act, [], "")


def _se_apply(x, mean, w1, b1, w2, b2, act, gate, inplace: bool) -> torch.Tensor:
    """``x * gate(w2 act(w1 mean + b1) + b2)`` per channel; in place on ``x`` when allowed."""
    s = gate(F.linear(act(F.linear(mean, w1, b1)), w2, b2))[:, :, None, None]
    return x.mul_(s) if inplace else x * s


class FusedConvAct(nn.Module):
    """Inference conv with folded BN and a fused activation (``weight``, ``bias``)."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, act: nn.Module | None = None):
        super().__init__()
        if bn is not None:
            w, b = fold_bn(conv, bn)
        else:
            w = conv.weight.detach().clone()
            b = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype,
                                                                                    device=w.device)
        self.weight = nn.Parameter(w.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(b, requires_grad=False)
        self.same = isinstance(conv, Conv2dSame)
        self.stride = list(conv.stride)
        self.padding = [0, 0] if self.same else list(conv.padding)
        self.dilation = list(conv.dilation)
        self.groups = conv.groups
        if isinstance(conv.padding, str):
            raise ConfigError(f"string padding {conv.padding!r} is not supported by FusedConvAct")
        post = _postop(act)
        self.act = None if post is not None else act  # an activation oneDNN cannot fuse runs after
        self.attr, self.scalars, self.algorithm, self.act_fn = post or _ACT_POSTOPS[nn.Identity]
        self._packs: dict[tuple, torch.Tensor] = {}  # input shape -> oneDNN-packed weight
        self._pack_tag = None
        self.native_in_graph = False  # set by optimize(compile=True): see _conv2d_act_op
        # depthwise convs run on effnets' native kernel (bias + activation fused; see kernels)
        self.dw_act = _native_dw_act(w.shape, self.groups, self.stride, self.dilation, self.attr, self.scalars,
                                     self.algorithm)
        self._taps: torch.Tensor | None = None
        # 3x3 stride-1 convs: Winograd where it times faster (see _conv3x3); its weight and choices
        self.wino_act = _winograd_act(w.shape, self.groups, self.stride, self.dilation, self.attr, self.scalars,
                                      self.algorithm)
        self._wino: dict = {}
        # 1x1 convs: effnets' GEMM with bias, activation (SiLU included) in its epilogue; its panels
        self.pw_act = _pointwise_act(w.shape, self.groups, self.stride, self.padding, self.attr, self.scalars,
                                     self.algorithm)
        self._panels: torch.Tensor | None = None
        # other dense convs (stems, stride-2 3x3): the 1x1 GEMM on gathered patches
        # (kernels.conv_forward) where it times faster than oneDNN's; _panels holds its weight
        self.cv_act = (None if self.dw_act or self.wino_act or self.pw_act else
                       _dense_act(w.shape, self.groups, self.stride, self.dilation, self.attr, self.scalars,
                                  self.algorithm))
        # set by quantize_dynamic: int8 weights, each pixel's input channels rounded to 256 levels
        # over their own range on the fly (kernels.pointwise_q8); self.weight then holds the
        # dequantized int8 weight, so every path (exports, other devices) computes the same thing.
        # bf16 (quantize_bf16): the weight rounded to bf16, the input rounded to bf16 on the fly
        # and the products summed in fp32 (kernels.pointwise_bf16)
        self.int8 = False
        self.bf16 = False
        self._lowp: tuple | None = None  # the int8 / bf16 GEMM's weights (_gemm_weights)
        # set by fuse_modules where only the next module of the same block reads this output: the
        # output buffer is then kept and written again on the next call (no fresh pages to fault in)
        self.reuse_output = False
        self._out: torch.Tensor | None = None
        self._gates: torch.Tensor | None = None  # forward_gated's (N, C) gates, written again next call
        self._sums: torch.Tensor | None = None  # the depthwise kernel's (N, C) channel sums, likewise
        self.emit_channel_sums = False  # set by fuse_modules when a squeeze-excite reads this output
        self._graph_se: tuple = ()  # (that FastSqueezeExcite,): a tuple, so not a registered child

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.int8 or self.bf16:
            return self._lowp_forward(x)
        if self.same:
            x = pad_same(x, self.weight.shape[-1], self.stride[0], self.dilation[0])
        if _plain_mode():
            if self.se_fused_in_graph(x):
                se = self._graph_se[0]
                return torch.ops.effnets.dw_conv_se(x, self.weight, self.bias, self.padding, self.stride[0],
                                                    self.dw_act, se.w1, se.b1, se.w2, se.b2, se.act_name,
                                                    se.gate_name)
            if self.native_in_graph and torch.compiler.is_compiling() and _native_graph_ok(x, self.weight):
                # optimize(compile=True): effnets' conv + SiLU as one opaque op, Inductor compiles the rest
                y = torch.ops.effnets.conv2d_act(x, self.weight, self.bias, self.padding, self.stride,
                                                 self.dilation, self.groups, self.attr, self.scalars, self.algorithm)
                return y if self.act is None else self.act(y)
        # eager CPU inference; parameters read from _parameters (nn.Module.__getattr__ costs ~2 us
        # a lookup, and at batch 1 the per-call Python is a fifth of B0's time)
        elif (_MKLDNN and x.is_cpu and not x.requires_grad
              and (x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and _MKLDNN_BF16))
              and x.dtype == self._parameters["weight"].dtype):
            native = x.dtype == torch.float32 and (kernels._LIB is not None or kernels.library() is not None)
            # effnets' kernel that may run this layer: the depthwise kernel, the 1x1 GEMM or the patch GEMM
            kind = ("dw" if self.dw_act is not None else "pw" if self.pw_act is not None else
                    "cv" if self.cv_act is not None else None) if native else None
            choice = self._wino.get((kind, x.shape)) if kind else False
            if choice or (kind == "dw" and x.shape[1] != self.groups):  # a misfit input: the kernel's clear error
                return self._run_native(kind, x)  # chosen before: no oneDNN weight needed
            w = self._packed_weight(x)
            args = (x, w, self.bias, self.padding, self.stride, self.dilation, self.groups, self.attr, self.scalars,
                    self.algorithm)
            if choice is None and self._choose_native(kind, x, args):
                return self._run_native(kind, x)
            if choice is False and kind != "dw" and resource is not None:
                probe = self._wino.get(("faults", x.shape))
                if probe is not None:
                    return self._count_faults(kind, x, args, probe)
            if self.wino_act is not None and x.dtype == torch.float32:
                oh, ow = (x.shape[2] + 2 * self.padding[0] - 2, x.shape[3] + 2 * self.padding[1] - 2)
                shape = (x.shape[0], self.weight.shape[0], oh, ow)
                y = _conv3x3(self._wino, x, self.weight, self.bias, self.padding, self.wino_act,
                             functools.partial(_onednn_conv_act, *args), lambda: self._output_tensor(shape))
            else:
                y = _onednn_conv_act(*args)
            return y if self.act is None else self.act(y)
        y = self.act_fn(F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups))
        return y if self.act is None else self.act(y)

    def _lowp_native(self) -> bool:
        """Whether this int8 / bf16 1x1 conv can run on effnets' kernels here (the int8 GEMM has
        AVX2 and plain C code; the bf16 one needs AVX512-BF16)."""
        return (kernels._LIB is not None or kernels.library() is not None) and (not self.bf16 or kernels.bf16_fast())

    def _lowp_forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """The int8 (``quantize_dynamic``) or bf16 (``quantize_bf16``) 1x1 conv: effnets' kernel in
        eager CPU float32 inference, else the same arithmetic in PyTorch ops (the input rounded as
        the kernel rounds it, then the conv with the rounded weight: exports, traces, compiles,
        CUDA, no C compiler, a CPU without AVX512-BF16)."""
        if (not _plain_mode() and x.is_cpu and x.dtype == torch.float32 and not x.requires_grad and x.ndim == 4
                and x.shape[1] == self._parameters["weight"].shape[1] and self._lowp_native()):
            return self._native_pointwise(x, gate)
        if gate is not None:
            x = x * gate.reshape(*gate.shape[:2], 1, 1)
        x = kernels.round_bf16(x) if self.bf16 else kernels.quantize_rows(x)
        y = self.act_fn(F.conv2d(x, self.weight, self.bias))
        return y if self.act is None else self.act(y)

    def se_fused_in_graph(self, x: torch.Tensor) -> bool:
        """True while compiling when this depthwise conv and the squeeze-excite after it run as the
        one op ``effnets::dw_conv_se`` (the squeeze-excite then passes its input through)."""
        return (bool(self._graph_se) and self.native_in_graph and torch.compiler.is_compiling()
                and _native_graph_ok(x, self.weight) and not self._forward_hooks)

    def _native_depthwise(self, x: torch.Tensor) -> torch.Tensor:
        """Depthwise conv + bias + activation in one pass (``kernels.depthwise_forward``; B0's
        depthwise convs with SiLU and the squeeze-excite's pooling: ~1.5x oneDNN's conv, native
        SiLU and ``mean`` at batch 1, ~1.3x at batch 8, ``benchmarks/kernels.py``).  With ``emit_channel_sums`` the per-channel sums of the
        output ride along on it for the following :class:`FastSqueezeExcite`."""
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        self._check_weight(weight)
        if self._taps is None:
            self._taps = kernels.depthwise_taps(weight)
        sums = self.emit_channel_sums and not self._forward_hooks  # a hook could change the output
        (ph, pw), st, shape = self.padding, self.stride[0], self._dw_output_shape(x)
        if x.shape[1] != shape[1] or bias.dtype != torch.float32 or shape[2] < 1 or shape[3] < 1:
            y, s = kernels.depthwise_forward(x, self._taps, bias, st, (ph, pw), self.dw_act,  # raises
                                             channel_sums=sums)
        else:  # the checks above are all depthwise_forward's that can fail here: skip its ~10 us
            if not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            out, s = self._output_tensor(shape), self._sums_buffer(shape) if sums else None
            y = kernels.depthwise_into(x, self._taps, bias, out, s, st, (ph, pw), kernels.DW_ACT_CODES[self.dw_act])
        return self._with_sums(y, s)

    def _dw_output_shape(self, x: torch.Tensor) -> tuple:
        k, (h, w), (ph, pw), st = self._parameters["weight"].shape[-1], x.shape[2:], self.padding, self.stride[0]
        return (x.shape[0], self._parameters["weight"].shape[0], (h + 2 * ph - k) // st + 1, (w + 2 * pw - k) // st + 1)

    def _sums_buffer(self, shape: tuple) -> torch.Tensor:
        """The (N, C) channel-sums tensor for an output of ``shape``: the last call's where its
        reader is done with it (``_sole_owner``), else a fresh one, kept."""
        s = self._sums
        if s is None or s.shape[0] != shape[0] or s.shape[1] != shape[1] or not _sole_owner(s, holders=2):
            s = self.__dict__["_sums"] = torch.empty((shape[0], shape[1]), dtype=torch.float32)
        return s

    def _with_sums(self, y: torch.Tensor, s: torch.Tensor | None) -> torch.Tensor:
        if s is not None:
            y._effnets_channel_sums = s
        else:  # a kept buffer may carry last call's sums
            y.__dict__.pop("_effnets_channel_sums", None)
        return y if self.act is None else self.act(y)

    def forward_expanded(self, x: torch.Tensor, expand: nn.Module) -> torch.Tensor | None:
        """``self(expand(x))`` for an inverted-residual block's expand 1x1 conv (``expand``) and
        this depthwise conv as one native pass (``kernels.expand_depthwise_into``, equal bit for
        bit): the expanded tensor, the block's widest (B0's second stage at batch 8: 38.5 MB), is
        never written out and read back.  Timed against the two modules apart once per input
        shape (kept in ``_wino``).  None where it does not apply, and the caller runs the two
        modules: not plain float32 CPU inference, a conv off the native kernels (TF "same"
        padding, an activation that runs apart), hooks, or apart timed faster.  An int8 or bf16
        expand conv (``quantize_dynamic``, ``quantize_bf16``) runs its GEMM in the pass."""
        if isinstance(x, torch.fx.Proxy) or self._wino.get(("pw_dw", x.shape)) is False:
            return None  # the modules apart timed faster for this shape: skip the checks below (~5 us)
        if (not _FUSE_EXPAND or type(expand) is not FusedConvAct or self.dw_act is None or expand.pw_act is None
                or self.act is not None or expand.act is not None or self.same or _plain_mode()
                or x.requires_grad or x.dtype != torch.float32 or not x.is_cpu
                or x.ndim != 4 or any(p.dtype != torch.float32 for p in (*self._parameters.values(),
                                                                          *expand._parameters.values()))
                or x.shape[1] != expand._parameters["weight"].shape[1] or (expand.bf16 and not kernels.bf16_fast())
                or expand._parameters["weight"].shape[0] != self.groups
                or self._forward_hooks or self._forward_pre_hooks or expand._forward_hooks
                or expand._forward_pre_hooks or _module_hooks._global_forward_hooks
                or _module_hooks._global_forward_pre_hooks or (kernels._LIB is None and kernels.library() is None)):
            return None
        key = ("pw_dw", x.shape)
        choice = self._wino.get(key)
        if choice is None:
            choice = self._wino[key] = not _faster(lambda: self(expand(x)), lambda: self._expanded(x, expand))
            if choice:
                expand.__dict__["_out"] = None  # the expand conv's kept output is not needed any more
        return self._expanded(x, expand) if choice else None

    def _expanded(self, x: torch.Tensor, expand: "FusedConvAct") -> torch.Tensor:
        weight, ew = self._parameters["weight"], expand._parameters["weight"]
        self._check_weight(weight)
        expand._check_weight(ew)
        if self._taps is None:
            self._taps = kernels.depthwise_taps(weight)
        panels, pw_bias = expand._gemm_weights()
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        shape = self._dw_output_shape(x)
        if shape[2] < 1 or shape[3] < 1:  # the depthwise conv's own error for a map smaller than its kernel
            return self(expand(x))
        out = self._output_tensor(shape)
        s = self._sums_buffer(shape) if self.emit_channel_sums else None
        y = kernels.expand_depthwise_into(x, panels, pw_bias, kernels.DW_ACT_CODES[expand.pw_act], self._taps,
                                          self._parameters["bias"], out, s, self.stride[0], tuple(self.padding),
                                          kernels.DW_ACT_CODES[self.dw_act])
        return self._with_sums(y, s)

    def forward_projected(self, x: torch.Tensor, project: nn.Module,
                          shortcut: torch.Tensor | None = None) -> torch.Tensor | None:
        """``project(self(x))`` (``+ shortcut``) for a Fused-MBConv block's 3x3 expand conv (this
        module, where it runs the fused Winograd kernel) and its 1x1 project conv as one native
        pass (``kernels.winograd_pointwise_fused``, equal bit for bit): the expanded tensor, the
        block's widest (V2-S's 75x75 stage at batch 8: 33 MB), is never written out and read
        back, and this conv's kept output buffer is released.  Timed against the two modules apart
        once per input shape, after this conv's own Winograd choice (kept in ``_wino``).  None
        where it does not apply, and the caller runs the two modules: not plain float32 CPU
        inference, this conv off the fused Winograd kernel or not timed yet, the project conv off
        the native GEMM, a shortcut the GEMM cannot add, hooks, or apart timed faster."""
        if isinstance(x, torch.fx.Proxy):
            return None
        self._check_weight(self._parameters["weight"])  # a changed weight drops the choices read here
        key = ("wino_pw", x.shape)
        choice = self._wino.get(key)
        if choice is False:
            return None  # the modules apart timed faster for this shape: skip the checks below
        if (not _FUSE_EXPAND or type(project) is not FusedConvAct or self.wino_act is None
                or project.pw_act is None or self.act is not None or project.act is not None
                or self.same or self.int8 or self.bf16 or project.int8 or project.bf16 or _plain_mode()
                or tuple(self.padding) != (1, 1) or x.requires_grad or x.dtype != torch.float32 or not x.is_cpu
                or x.ndim != 4 or any(p.dtype != torch.float32 for p in (*self._parameters.values(),
                                                                          *project._parameters.values()))
                or x.shape[1] != self._parameters["weight"].shape[1]
                or project._parameters["weight"].shape[1] != self._parameters["weight"].shape[0]
                or self._forward_hooks or self._forward_pre_hooks or project._forward_hooks
                or project._forward_pre_hooks or _module_hooks._global_forward_hooks
                or _module_hooks._global_forward_pre_hooks or (kernels._LIB is None and kernels.library() is None)):
            return None
        shape = (x.shape[0], project._parameters["weight"].shape[0], x.shape[2], x.shape[3])
        if shortcut is not None and not (
                type(shortcut) is torch.Tensor and shortcut.dtype == torch.float32 and shortcut.is_cpu
                and not shortcut.requires_grad and tuple(shortcut.shape) == shape
                and shortcut.is_contiguous(memory_format=torch.channels_last)):
            return None
        if choice is None:  # only once this conv alone runs the fused Winograd kernel for this shape
            if not (self._wino.get(tuple(x.shape)) is True and self._wino.get(("fused", tuple(x.shape)))):
                return None
            def apart():
                y = self(x)
                return project(y) if shortcut is None else project.forward_residual(y, None, shortcut)
            choice = self._wino[key] = not _faster(apart, lambda: self._projected(x, project, shortcut, shape))
            if choice:
                self.__dict__["_out"] = None  # this conv's kept output is not needed any more
        return self._projected(x, project, shortcut, shape) if choice else None

    def _projected(self, x: torch.Tensor, project: "FusedConvAct", shortcut: torch.Tensor | None,
                   shape: tuple) -> torch.Tensor:
        up = self._wino["up"]  # _conv3x3's panels: held while any shape takes its fused route, as this one does
        project._check_weight(project._parameters["weight"])
        panels, pw_bias = project._gemm_weights()
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return kernels.winograd_pointwise_fused(x, up, self._parameters["bias"], self.wino_act, panels, pw_bias,
                                                project._output_tensor(shape), project.pw_act, shortcut)

    def _run_native(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        return (self._native_depthwise(x) if kind == "dw" else self._native_pointwise(x) if kind == "pw"
                else self._native_conv(x))

    def _native_conv(self, x: torch.Tensor) -> torch.Tensor:
        """A dense conv (a stem, a stride-2 3x3) + bias + activation on effnets' GEMM over
        gathered patches (``kernels.conv_forward``): SiLU in the epilogue, the output in a kept
        buffer where ``reuse_output`` allows (oneDNN allocates a fresh one every call; B0's stem
        output at batch 8 is 12.8 MB, ~3100 pages to fault in)."""
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        self._check_weight(weight)
        if self._panels is None:
            self._panels = kernels.conv_weight(weight)
        kernel, st, pad = tuple(weight.shape[2:]), self.stride[0], tuple(self.padding)
        shape = kernels.conv_output_shape(tuple(x.shape), weight.shape[0], kernel, st, pad)
        if x.shape[1] != weight.shape[1] or bias.dtype != torch.float32 or shape[2] < 1 or shape[3] < 1:
            y = kernels.conv_forward(x, self._panels, bias, weight.shape[0], kernel, st, pad, self.cv_act)  # raises
        else:
            if not x.is_contiguous(memory_format=torch.channels_last):
                x = x.contiguous(memory_format=torch.channels_last)
            y = kernels.conv_into(x, self._panels, bias, self._output_tensor(shape), kernel, st, pad,
                                  kernels.DW_ACT_CODES[self.cv_act])
        return y if self.act is None else self.act(y)

    def _choose_native(self, kind: str, x: torch.Tensor, args: tuple) -> bool:
        """Times effnets' kernel for this layer (``kind`` "dw": the depthwise kernel, "pw": the 1x1
        GEMM, "cv": the GEMM over gathered patches) against oneDNN's conv (``args``) for this input
        shape, keeps the answer in ``_wino`` (as for Winograd) and returns True where ours won.
        Neither wins everywhere: the GEMM wins small channel counts with SiLU and large maps,
        oneDNN some mid-size layers; the depthwise kernel wins on AVX2 CPUs (~1.3-1.5x with the
        channel sums it hands the squeeze-excite), oneDNN's AVX-512 code can beat it.  Where a
        squeeze-excite reads this output (a depthwise conv's ``emit_channel_sums``), oneDNN's side
        is charged the pooling pass the squeeze-excite then does itself.  Where oneDNN's 1x1 or
        dense conv won, its page faults in the model are counted next (:meth:`_count_faults`)."""
        sums = self.emit_channel_sums and not self._forward_hooks

        def library():
            y = _onednn_conv_act(*args)
            return y.sum((2, 3)) if sums else y

        lib, ours, key = [float("inf")], [float("inf")], tuple(x.shape)
        choice = self._wino[(kind, key)] = not _faster(_best_time(library, lib),
                                                        _best_time(lambda: self._run_native(kind, x), ours))
        if not choice and kind != "dw" and max(lib[0], ours[0]) < float("inf"):
            self._wino[("faults", key)] = (lib[0], ours[0], [])  # counted in the model: _count_faults
        return choice

    def _count_faults(self, kind: str, x: torch.Tensor, args: tuple, probe: tuple) -> torch.Tensor:
        """oneDNN's conv for a layer whose oneDNN route won :meth:`_choose_native`'s loop, with the
        page faults it takes counted (``getrusage``).  In that loop its fresh output is the block
        it freed a moment before; in the model, between other layers' allocations, glibc may hand
        it new pages that fault in one by one (ResNet-RS-50 at batch 8: ~9000 faults per call,
        ~0.85 us each here), which our kernels, writing into kept buffers, never take.  After
        two calls the fewer of their two counts, at :func:`_page_fault_cost` each, is added to
        oneDNN's time from the loop and the choice is made again by ``_faster``'s rule (ours unless
        oneDNN is 5% faster) (docs/benchmarks.md item 33).  No faults, no change, but the counting
        goes on for outputs of 1 MiB and more (smaller ones come from glibc's free lists): other
        work in the process between calls (another model, data loading) can make glibc hand back
        fresh pages later, to some calls only (the first after each other model's turn), so from
        the fifth call on the mean of the last four counts is charged (item 40)."""
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = _onednn_conv_act(*args)
        lib, ours, faults = probe
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        if len(faults) >= 2:
            key = tuple(x.shape)
            charged = min(faults) if len(faults) == 2 else sum(faults[-4:]) / 4 if len(faults) > 4 else 0
            if charged > 0 and not lib + charged * _page_fault_cost() < 0.95 * ours:
                self._wino[(kind, key)] = True
                self._wino.pop(("faults", key), None)
            elif y.numel() * y.element_size() < 1 << 20:
                self._wino.pop(("faults", key), None)
            else:
                del faults[:-4]
        return y if self.act is None else self.act(y)

    def forward_gated(self, x: torch.Tensor, se: nn.Module, residual: torch.Tensor | None = None) -> torch.Tensor | None:
        """``self(se(x))`` with the squeeze-excite's product folded into this 1x1 conv: the gates
        come from the channel means (the depthwise conv's sums where it left them), and effnets'
        GEMM scales its weights per image, so the gated tensor is never written and read back
        (a pass over the block's widest tensor).  None where that does not apply, and the caller
        (``layers.memory.se_conv``) runs ``self(se(x))``: not plain float32 CPU inference, not a
        1x1 conv on the native GEMM, a squeeze-excite the kernels cannot run, or hooks on either
        module (they would miss the call or the gated tensor).  ``residual``: added in the
        epilogue too (``forward_residual`` checked it)."""
        if (self.pw_act is None or type(se) is not FastSqueezeExcite or se.native_names is None or _plain_mode()
                or x.requires_grad or x.dtype != torch.float32 or not x.is_cpu or x.ndim != 4
                or self._parameters["weight"].dtype != torch.float32 or x.shape[1] != self._parameters["weight"].shape[1]
                or (self.bf16 and not kernels.bf16_fast())
                or self._forward_hooks or self._forward_pre_hooks or se._forward_hooks or se._forward_pre_hooks
                or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                or (kernels._LIB is None and kernels.library() is None)):
            return None
        key = ("se", x.shape)
        choice = self._wino.get(key)
        if choice is False:
            return None
        sums = x.__dict__.pop("_effnets_channel_sums", None)
        buf = self._gates
        if buf is None or buf.shape[0] != x.shape[0] or buf.shape[1] != x.shape[1] or not _sole_owner(buf, holders=2):
            buf = self.__dict__["_gates"] = torch.empty((x.shape[0], x.shape[1]), dtype=torch.float32)
        if sums is not None:  # the means' 1 / (H * W) applied in the kernel: no division op
            gates = se.gates(sums, out=buf, mean_scale=1.0 / (x.shape[2] * x.shape[3]))
        else:
            gates = se.gates(x.mean((2, 3)), out=buf)
        if choice is None and not self._choose_gated(x, se, gates, sums, key):
            if sums is not None:
                x._effnets_channel_sums = sums  # for the squeeze-excite the caller now runs
            return None
        return self._native_pointwise(x, gates, residual)

    def forward_residual(self, x: torch.Tensor, se: nn.Module | None, shortcut: torch.Tensor) -> torch.Tensor:
        """``self(se(x)) + shortcut`` (``se`` None: ``self(x) + shortcut``) for a block's last 1x1
        conv where :func:`fuse_modules` moved the block's residual sum (``residual_in_branch``):
        on effnets' GEMMs (fp32 where it won the timing, int8, bf16) the shortcut is added in the
        epilogue while the tile is in registers, so the block output is written once instead of
        written, read back and written again (V2-S b8: its 35 sums took 6.3 ms of 375, and 33 of
        them move here; equal bits: the same two float additions in the same order).  Elsewhere (oneDNN chosen or not timed yet,
        hooks, graphs, autograd) the conv, then the sum."""
        if self._residual_ok(x, shortcut):
            if se is not None:
                y = self.forward_gated(x, se, shortcut)
                if y is not None:
                    return y
                x = se(x)
            if self._lowp_native() if (self.int8 or self.bf16) else self._wino.get(("pw", x.shape)) is True:
                return self._native_pointwise(x, None, shortcut)
        elif se is not None:
            x = se(x)
        y = self(x)
        return y.add_(shortcut) if inplace_ok(y, shortcut) else y + shortcut

    def _residual_ok(self, x: torch.Tensor, shortcut: torch.Tensor) -> bool:
        """Whether :meth:`forward_residual` may hand ``shortcut`` to the GEMM: eager float32 CPU
        inference with the kernels built, no hooks on this conv (they would see neither the call
        nor the output without the sum), no activation module after the GEMM, and a channels-last
        shortcut of the output's shape."""
        w = self._parameters["weight"]
        return (self.pw_act is not None and self.act is None and type(x) is torch.Tensor
                and (kernels._LIB is not None or kernels.library() is not None)
                and type(shortcut) is torch.Tensor and not _plain_mode()
                and x.dtype == torch.float32 and shortcut.dtype == torch.float32 and x.is_cpu and shortcut.is_cpu
                and not (x.requires_grad or shortcut.requires_grad) and x.ndim == 4 and x.shape[1] == w.shape[1]
                and shortcut.shape == (x.shape[0], w.shape[0], x.shape[2], x.shape[3])
                and shortcut.is_contiguous(memory_format=torch.channels_last)
                and not (self._forward_hooks or self._forward_pre_hooks or _module_hooks._global_forward_hooks
                         or _module_hooks._global_forward_pre_hooks))

    def _choose_gated(self, x: torch.Tensor, se: nn.Module, gates: torch.Tensor, sums, key) -> bool:
        """Times the gated GEMM against the squeeze-excite's product pass + this conv as it would
        run (on a copy of ``x``) and keeps the answer in ``_wino``: folding saves a pass over
        ``x`` but splits the GEMM's row tiles at image boundaries, which on 7x7 maps costs more
        than the pass (``benchmarks/kernels.py``)."""
        scratch = x.clone(memory_format=torch.channels_last)

        def separate():
            if sums is not None:
                scratch._effnets_channel_sums = sums
            return self(se(scratch))

        choice = self._wino[key] = not _faster(separate, lambda: self._native_pointwise(x, gates))
        return choice

    def _native_pointwise(self, x: torch.Tensor, gate: torch.Tensor | None = None,
                          residual: torch.Tensor | None = None) -> torch.Tensor:
        """1x1 conv + bias + activation as one pass of effnets' GEMM (``kernels.pointwise_conv``):
        SiLU is applied in the epilogue while the tile is in registers (oneDNN's conv leaves it to a
        second pass over the output), and the output can go to a kept buffer.  ``gate``: (N, C_in)
        factors applied to the input (``forward_gated``); ``residual``: added to the output in the
        epilogue (``forward_residual``)."""
        weight, bias = self._parameters["weight"], self._parameters["bias"]
        self._check_weight(weight)
        co = weight.shape[0]
        if not x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        panels, b = self._gemm_weights()
        lowp = self.int8 or self.bf16
        if not lowp and (x.shape[1] != weight.shape[1] or bias.dtype != torch.float32):  # raises, naming the misfit
            return kernels.pointwise_conv(x, panels, bias, co, self.pw_act, residual, gate=gate)
        out = self._output_tensor((x.shape[0], co, x.shape[2], x.shape[3]))
        into = (kernels.pointwise_q8_into if self.int8 else kernels.pointwise_bf16_into if self.bf16
                else kernels.pointwise_into)
        y = into(x, panels, b, out, kernels.DW_ACT_CODES[self.pw_act], residual=residual, gate=gate)
        return y if self.act is None else self.act(y)

    def _gemm_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What this 1x1 conv's GEMM reads, made once per weight (``_check_weight`` drops them):
        (panels, bias) for :func:`kernels.pointwise_into`, with ``int8`` (panels, cols) for
        :func:`kernels.pointwise_q8_into` (the weight is int8 x scale already: quantizing it
        again is exact), with ``bf16`` (bf16 panels, bias) for :func:`kernels.pointwise_bf16_into`
        (the weight is bf16-rounded already)."""
        p = self._parameters
        if self.int8 or self.bf16:
            if self._lowp is None:
                self._lowp = (kernels.pointwise_weight_q8(p["weight"], p["bias"])[:2] if self.int8
                              else (kernels.pointwise_weight_bf16(p["weight"])[0], p["bias"]))
            return self._lowp
        if self._panels is None:
            self._panels = kernels.pointwise_weight(p["weight"])
        return self._panels, p["bias"]

    def _output_tensor(self, shape: tuple) -> torch.Tensor:
        """A channels-last float32 tensor to write this call's output into: the one written last
        call when it may be written again (``reuse_output`` is set, no hooks can capture the
        output, and nothing but this module still references it: the block consumed it,
        ``_sole_owner``), else a fresh one, kept for next time when ``reuse_output`` allows.
        glibc returns freed buffers over 32 MiB to the kernel, so a fresh output of B0's first
        stage at batch 8 costs ~9000 page faults."""
        reuse = self.reuse_output and _REUSE and not (
            self._forward_hooks or self._forward_pre_hooks or _module_hooks._global_forward_hooks
            or _module_hooks._global_forward_pre_hooks)
        buf = self._out if reuse else None
        if buf is not None and buf.shape == shape and _sole_owner(buf, holders=2):
            return buf
        buf = torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
        if reuse or self._out is not None:
            self.__dict__["_out"] = buf if reuse else None  # a plain attribute: skip nn.Module.__setattr__
        return buf

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        """The weight reordered once into the blocked layout oneDNN picks for this input shape,
        instead of on every call (what Inductor's weight freezing does; ~10% of B0's time at
        batch 1).  Cached per input shape (at most ``_PACK_SHAPES``), dropped when the weight
        tensor changes (``load_state_dict``, ``.to()``)."""
        w = self._parameters["weight"]
        self._check_weight(w)
        if not _PREPACK:
            return w
        return _pack_for(self._packs, w, x.shape, self.padding, self.stride, self.dilation, self.groups)

    def _check_weight(self, w: torch.Tensor) -> None:
        """Drop every form derived from the weight ``w`` (packs, taps, Winograd) when it has changed."""
        tag = (w.data_ptr(), 0 if w.is_inference() else w._version)
        if self._pack_tag != tag:
            self._packs, self._pack_tag, self._taps, self._wino = {}, tag, None, {}
            self._panels, self._lowp = None, None

    def __getstate__(self):  # packed oneDNN tensors neither pickle nor deep-copy; they are rebuilt
        return {**self.__dict__, "_packs": {}, "_pack_tag": None, "_taps": None, "_wino": {}, "_panels": None,
                "_out": None, "_gates": None, "_sums": None, "_lowp": None}

    def __setstate__(self, state):  # models saved before Winograd / the native GEMM existed run oneDNN's
        state.setdefault("wino_act", None)
        state.setdefault("_wino", {})
        state.setdefault("pw_act", None)
        state.setdefault("cv_act", None)
        state.setdefault("_panels", None)
        state.setdefault("reuse_output", False)
        state.setdefault("_out", None)
        state.setdefault("_gates", None)
        state.setdefault("_sums", None)
        state.setdefault("int8", False)
        state.setdefault("bf16", False)
        state.pop("_q8", None)  # the int8 weights' old name
        state.setdefault("_lowp", None)
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        o, i = self.weight.shape[:2]
        return (f"{i * self.groups}, {o}, kernel={tuple(self.weight.shape[2:])}, stride={tuple(self.stride)}, "
                f"groups={self.groups}, act={self.attr}{', same' if self.same else ''}{', int8' if self.int8 else ''}"
                f"{', bf16' if self.bf16 else ''}")


class FastLinear(nn.Linear):
    """``nn.Linear`` of an optimized model (same ``weight``/``bias``, same state dict).  A
    float32 CPU input in eager inference, 2-D or (..., C) (an attention block's (B, T, C)), runs
    on effnets' 1x1-conv GEMM (its rows as the pixels of a channels-last (rows, C, 1, 1) map),
    with ``act_name``'s activation in the epilogue (set by ``fuse_modules`` where a block declares
    ``linear_act``: a transformer MLP's GELU); everything else (exports, traces, compiles, other
    devices and dtypes, autograd) runs ``F.linear`` and then that activation.

    Why: a classifier at batch 1 is a matrix-vector product bound by reading its weight (B0:
    5 MB), which ``F.linear`` reads on one thread and, by the classifier, from memory
    (``benchmarks/ab.py linear`` on the AMD machine: B0 b1 7.94 -> 7.71 ms, MobileNetV3-L b1
    5.19 -> 4.93 ms).  Not timed per shape as the convs are: alone, weight hot, the GEMM was
    faster at every size that script lists (1-512 rows), and a timing alone would not see the
    cold weight the model reads.  Attention blocks' linears: the GEMM with GELU in the epilogue
    saves the MLP's separate GELU pass (``benchmarks/ab.py gelu``: ViT-S/16 1.17x / 1.06x at batch
    1 / 8; inside the model the products alone take about ``F.linear``'s time, docs/benchmarks.md
    item 37).  With ``quantize_dynamic`` (``int8``) the int8 GEMM with
    per-row input ranges, a quarter of the weight bytes (B0 b1 6.46 -> 6.10 ms in the same A/B);
    its plain path rounds the rows as the kernel does (``quantize_rows``).  With ``quantize_bf16``
    (``bf16``) the bf16 GEMM (AVX512-BF16), its plain path rounding the input to bf16."""

    def __init__(self, lin: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        bias = None if lin.bias is None else nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
        self.register_parameter("bias", bias)
        # the epilogue's activation (fuse_modules: a block's linear_act) and its plain function
        self.act_name, self.act_fn = "identity", None
        self.int8 = False  # set by quantize_dynamic; weight then holds the dequantized int8 weight
        self.bf16 = False  # set by quantize_bf16; weight then holds the bf16-rounded weight
        self._tag = None  # (data_ptr, version) of the weight the forms below were made from
        self._panels: tuple | None = None  # (panels, bias) for kernels.pointwise_into / _bf16_into, or int8 (panels, cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self._parameters["weight"], self._parameters["bias"]
        # any (..., C) input: its rows are the GEMM's pixels (int8: each row of C values quantized
        # over its own range)
        if (x.ndim >= 2 and _NATIVE_PW and not _plain_mode() and x.is_cpu
                and x.dtype == torch.float32 and w.dtype == torch.float32 and (b is None or b.dtype == torch.float32)
                and not x.requires_grad and x.shape[-1] == w.shape[1] and x.numel() > 0
                and (kernels._LIB is not None or kernels.library() is not None)
                and (not self.bf16 or kernels.bf16_fast())):
            return self._native(x.reshape(-1, x.shape[-1]), w, b).reshape(*x.shape[:-1], w.shape[0])
        if self.int8:  # the rows (last dim) as the kernel rounds them: a (rows, C, 1, 1) map's pixels
            x = kernels.quantize_rows(x.reshape(-1, x.shape[-1], 1, 1)).reshape(x.shape)
        elif self.bf16:
            x = kernels.round_bf16(x)
        y = F.linear(x, w, b)
        return y if self.act_fn is None else self.act_fn(y)

    def _native(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        tag = tuple((t.data_ptr(), 0 if t.is_inference() else t._version) for t in (w, b) if t is not None)
        if self._tag != tag or self._panels is None:
            w4, bias = w.detach()[:, :, None, None], (torch.zeros(w.shape[0]) if b is None else b.detach()).contiguous()
            self._panels = (kernels.pointwise_weight_q8(w4, bias)[:2] if self.int8
                            else (kernels.pointwise_weight_bf16(w4)[0], bias) if self.bf16
                            else (kernels.pointwise_weight(w4), bias))
            self._tag = tag
        x = x.contiguous()
        out = torch.empty((x.shape[0], w.shape[0]), dtype=torch.float32)
        x4, out4 = x[:, :, None, None], out[:, :, None, None]  # (N, K) as a channels-last (N, K, 1, 1) map
        into = (kernels.pointwise_q8_into if self.int8 else kernels.pointwise_bf16_into if self.bf16
                else kernels.pointwise_into)
        into(x4, *self._panels, out4, kernels.DW_ACT_CODES[self.act_name])
        return out

    def __getstate__(self):  # derived weights are rebuilt, not pickled
        return {**self.__dict__, "_tag": None, "_panels": None}

    def __setstate__(self, state):  # saved before the bf16 GEMM or the fused activation existed
        state.setdefault("bf16", False)
        state.setdefault("act_name", "identity")
        state.setdefault("act_fn", None)
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        return (super().extra_repr() + ("" if self.act_name == "identity" else f", act={self.act_name}")
                + (", int8" if self.int8 else ", bf16" if self.bf16 else ""))


class FastSqueezeExcite(nn.Module):
    """SqueezeExcite with its 1x1 convs on pooled vectors run as matrix products."""

    def __init__(self, se: SqueezeExcite):
        super().__init__()
        r, e = se.conv_reduce, se.conv_expand
        self.w1 = nn.Parameter(r.weight.detach().flatten(1).clone(), requires_grad=False)
        self.b1 = nn.Parameter(r.bias.detach().clone(), requires_grad=False)
        self.w2 = nn.Parameter(e.weight.detach().flatten(1).clone(), requires_grad=False)
        self.b2 = nn.Parameter(e.bias.detach().clone(), requires_grad=False)
        self.act = se.act
        self.gate = se.gate
        self.act_name = _SE_FNS.get(type(se.act), (None,))[0]
        self.gate_name = _SE_FNS.get(type(se.gate), (None,))[0]
        self._fused_into: tuple = ()  # (the depthwise FusedConvAct that applies this SE in the graph,)
        names = (self.act_name, self.gate_name)
        self.native_names = names if (all(k in kernels.SE_ACT_CODES for k in names)
                                      and kernels.library() is not None) else None

    def gates(self, mean: torch.Tensor, out: torch.Tensor | None = None, mean_scale: float = 1.0) -> torch.Tensor:
        """The (N, C) gates from the (N, C) channel means (or sums, with ``mean_scale`` = 1 / pixels),
        natively (``kernels.se_gates_into``; only where ``native_names`` is set), into ``out`` (a
        contiguous float32 (N, C) tensor) or a new tensor."""
        p, (a, g) = self._parameters, self.native_names
        if out is None:
            out = torch.empty(mean.shape, dtype=torch.float32)
        w1, b1, w2, b2 = p["w1"], p["b1"], p["w2"], p["b2"]
        if w1.dtype != torch.float32 or mean.dtype != torch.float32 or not mean.is_contiguous():  # a cast copy
            return kernels.se_gates(mean * mean_scale, w1, b1, w2, b2, a, g)
        return kernels.se_gates_into(mean, w1, b1, w2, b2, out, kernels.SE_ACT_CODES[a], kernels.SE_ACT_CODES[g],
                                     mean_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused_into and _plain_mode() and self._fused_into[0].se_fused_in_graph(x):
            return x  # already gated by effnets::dw_conv_se
        # sums from a native depthwise conv (eager only; _plain_mode first: dynamo breaks on __dict__)
        sums = None if _plain_mode() else x.__dict__.pop("_effnets_channel_sums", None)
        # _plain_mode first: dynamo cannot trace is_inference_mode_enabled (a graph break per block)
        inplace = not _plain_mode() and torch.is_inference_mode_enabled() and x.is_inference()
        if inplace and self.native_names and kernels.library() is not None and x.dtype == torch.float32 \
                and x.is_cpu and x.is_contiguous(memory_format=torch.channels_last):
            # MLP, gate and product in one native call (``kernels.se_gate_``): at batch 1 the seven
            # small PyTorch ops cost more in dispatch than in arithmetic; sums: 1 / (H * W) in the kernel
            p = self._parameters
            return kernels.se_gate_(x, sums, p["w1"], p["b1"], p["w2"], p["b2"], *self.native_names,
                                    mean_scale=1.0 / (x.shape[2] * x.shape[3]) if sums is not None else 1.0)
        if sums is None and x.dtype == torch.bfloat16 and not _plain_mode():
            # bf16 (optimize(dtype=bf16)): pooled in one native fp32 pass, not via PyTorch's fp32 copy
            sums = kernels.bf16_channel_sums(x)
            if sums is not None and inplace and self.native_names:
                # and the MLP natively in fp32: bf16 addmm on one pooled row costs ~38 us (B0 b1: 1.1 of 10 ms)
                a, g = self.native_names
                gates = kernels.se_gates_into(sums, *self._fp32_params(), torch.empty_like(sums),
                                              kernels.SE_ACT_CODES[a], kernels.SE_ACT_CODES[g],
                                              1.0 / (x.shape[2] * x.shape[3]))
                return x.mul_(gates.to(torch.bfloat16)[:, :, None, None])
            if sums is not None:
                sums = sums.to(torch.bfloat16)
        s = sums / (x.shape[2] * x.shape[3]) if sums is not None else x.mean((2, 3))
        # in place: x is the block's fresh conv output, so no new buffer
        return _se_apply(x, s, self.w1, self.b1, self.w2, self.b2, self.act, self.gate, inplace)

    def _fp32_params(self) -> tuple[torch.Tensor, ...]:
        """w1, b1, w2, b2 as contiguous float32 (copies of bf16 ones, rebuilt when they change)."""
        p = self._parameters
        key = tuple((t.data_ptr(), t._version) for t in (p["w1"], p["b1"], p["w2"], p["b2"]))
        cached = self.__dict__.get("_fp32_cache")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_fp32_cache"] = (key, tuple(
                p[k].detach().float().contiguous() for k in ("w1", "b1", "w2", "b2")))
        return cached[1]

    def gate_residual_(self, x: torch.Tensor, shortcut: torch.Tensor, act: nn.Module) -> torch.Tensor | None:
        """``act(self(x) + shortcut)`` in place on ``x`` as one native call (means, gates, product,
        sum and activation: two passes over ``x`` instead of five), or None where that cannot run
        (no native kernels, an activation they lack, hooks on this module, not plain inference);
        the caller then runs the modules one by one.  ResNet-RS blocks use it."""
        out_act = _SE_FNS.get(type(act), (None,))[0] if type(act) is not nn.Identity else "identity"
        if (self.native_names is None or out_act not in kernels.SE_ACT_CODES or _plain_mode()
                or self._forward_hooks or self._forward_pre_hooks or not torch.is_inference_mode_enabled()
                or not x.is_inference() or x.dtype != torch.float32 or x.device.type != "cpu"
                or shortcut.shape != x.shape or not x.is_contiguous(memory_format=torch.channels_last)):
            return None
        return kernels.se_gate_(x, None, self.w1, self.b1, self.w2, self.b2, *self.native_names, residual=shortcut,
                                out_act=out_act)


def fuse_modules(model: nn.Module) -> nn.Module:
    """In place: every ConvNormAct -> FusedConvAct (BN folded, act fused), every other plain
    Conv2d -> FusedConvAct without activation, SqueezeExcite -> FastSqueezeExcite, nn.Linear ->
    FastLinear."""
    for name, child in list(model.named_children()):
        if isinstance(child, ConvNormAct) and type(child.bn) is nn.BatchNorm2d:
            setattr(model, name, FusedConvAct(child.conv, child.bn, child.act))
        elif isinstance(child, SqueezeExcite):
            setattr(model, name, FastSqueezeExcite(child))
        elif type(child) is nn.Linear:
            setattr(model, name, FastLinear(child))
        elif type(child) in (nn.Conv2d, Conv2dSame) and isinstance(child.padding, (tuple, list)) \
                and child.padding_mode == "zeros":
            setattr(model, name, FusedConvAct(child))
        else:
            fuse_modules(child)
    # a block whose class declares ``linear_act = (linear, act)``: ``act`` reads that linear's
    # output right after it and nothing else does (a transformer MLP's fc1 -> GELU), so the GEMM's
    # epilogue applies it
    names = getattr(type(model), "linear_act", None)
    if names:
        lin, act = getattr(model, names[0], None), getattr(model, names[1], None)
        post = _postop(act) if isinstance(act, nn.Module) and type(lin) is FastLinear else None
        native = _native_act(post[0], post[1], post[2]) if post else None
        if native not in (None, "identity") and lin.act_name == "identity":
            lin.act_name, lin.act_fn = native, post[3]
            setattr(model, names[1], nn.Identity())
    # a block's expand conv feeds only its depthwise conv, which feeds only its SE / project conv
    # (MBConv, depthwise-separable, Fused-MBConv, ResNet bottleneck)
    for first, then in (("conv_pw", "conv_dw"), ("conv_dw", "conv_pwl"), ("conv_dw", "conv_pw"),
                        ("conv_exp", "conv_pwl"), ("conv1", "conv2"), ("conv2", "conv3")):
        a, b = getattr(model, first, None), getattr(model, then, None)
        if isinstance(a, FusedConvAct) and isinstance(b, FusedConvAct) and a.act is None:
            a.reuse_output = True
    # the block's last conv: its output leaves the block (residual sum in place, next block's
    # input), and is dead by the next call unless someone kept it, which _sole_owner sees; these
    # outputs are narrow, so keeping them costs little memory (B0 b8: ~20 MiB)
    # stem convs likewise (ResNet-RS's stem ends in a stride-2 conv "pool")
    # a projection shortcut's conv too (ResNet's first block of a stage): only the block's residual
    # sum reads its output (ResNet-RS-50 b8, stages.0: 13 MB, which glibc handed back between calls
    # when other models ran in the same process: ~900-4800 page faults per forward, one-off)
    shortcut = getattr(getattr(model, "shortcut", None), "conv", None)
    for c in [getattr(model, last, None) for last in ("conv_pwl", "conv3", "conv_exp", "stem", "pool")] + [shortcut]:
        if isinstance(c, FusedConvAct) and c.act is None:  # conv_exp: Fused-MBConv without expansion
            c.reuse_output = True
    # the block's residual sum in its last 1x1 conv's epilogue (FusedConvAct.forward_residual)
    last = getattr(model, "conv_pwl", None)
    if type(model) in (MBConv, FusedMBConv) and model.has_skip \
            and isinstance(last, FusedConvAct) and last.pw_act is not None and last.act is None:
        model.residual_in_branch = True
    dw, se = getattr(model, "conv_dw", None), getattr(model, "se", None)
    if isinstance(dw, FusedConvAct) and isinstance(se, FastSqueezeExcite) and dw.act is None \
            and dw.dw_act is not None:
        dw.emit_channel_sums = True  # the block runs conv_dw -> se (DepthwiseSeparable, MBConv)
        if se.act_name and se.gate_name and kernels.library() is not None:
            dw._graph_se, se._fused_into = (se,), (dw,)
    return model


def release_buffers(model: nn.Module) -> int:
    """Drop the output buffers an optimized model keeps from call to call (see
    ``FusedConvAct._output_tensor``; they hold the outputs of the layers on effnets' kernels
    among the block-internal activations, block outputs and stems of the last batch, so it
    depends on the layers' timed choices: 100-135 MiB for efficientnet_b0 at batch 8, 480 MiB
    for efficientnetv2_s at batch 8 @300, session 18);
    the next call allocates them again.
    Returns the number of bytes released (0 where none was kept or a caller still holds one)."""
    released = 0
    for m in model.modules():
        buf = getattr(m, "_out", None) if isinstance(m, FusedConvAct) else None
        if buf is not None:
            released += buf.numel() * buf.element_size()
            m._out = None
    return released


def _layout_hook(module, args, dtype: torch.dtype | None = None):
    if not args or not isinstance(args[0], torch.Tensor) or args[0].ndim != 4:
        return None
    x = args[0]
    if dtype is not None and x.is_floating_point():
        x = x.to(dtype)
    return (x.contiguous(memory_format=torch.channels_last),) + tuple(args[1:])


def _to_layout_hook(dtype: torch.dtype | None):
    """Forward pre-hook: input to channels_last (and ``dtype``); a partial, so the optimized
    model still pickles (``torch.save(model)``)."""
    return functools.partial(_layout_hook, dtype=dtype)


def _cast_back_hook(module, args, out):
    if isinstance(out, torch.Tensor) and out.dtype != torch.float32 and out.is_floating_point():
        return out.float()
    return out


def optimize(model: nn.Module, mode: str = "inference", compile: bool = False, dtype=None, *,
             calibration=None, calibration_batches: int = 32, compile_options: dict | None = None,
             backend: str = "torch") -> nn.Module:
    """An inference-optimized copy of ``model`` (see the module docstring).

    ``dtype``: None / torch.float32 (exact up to float rounding), torch.bfloat16 (weights and
    activations in bf16, logits returned in fp32), ``"int8"`` (post-training static
    quantization; ``calibration`` is a folder of images, a tensor of images or an iterable of
    image batches, see :func:`quantize_int8`) or ``"int8_dynamic"`` (1x1 convs in int8 with
    per-pixel activation ranges found on the fly, no calibration: :func:`quantize_dynamic`) or
    ``"bf16_mixed"`` (1x1 convs and linear layers with bf16 operands and fp32 sums on
    AVX512-BF16, everything else fp32, as under ``torch.autocast``: :func:`quantize_bf16`).
    ``compile=True`` wraps the result in ``torch.compile`` (Inductor; weights are frozen, so call
    it under ``torch.inference_mode`` or ``torch.no_grad``; not with ``"int8_dynamic"``, which runs
    eagerly).  ``backend="onnxruntime"``: export to ONNX (verified) and run it in
    ONNX Runtime on CPU, fp32 or, with ``dtype="int8"`` and ``calibration``, statically
    quantized by ONNX Runtime (see ``effnets.export.runtime``).  ``mode="train"`` returns the
    model itself in channels_last with memory-efficient training blocks on (the switch in
    ``effnets.layers.memory``)."""
    if mode in ("train", "training"):
        from .layers.memory import set_memory_efficient
        model = model.to(memory_format=torch.channels_last).train()
        set_memory_efficient(model, True)
        model.register_forward_pre_hook(_to_layout_hook(None))
        return torch.compile(model, **(compile_options or {})) if compile else model
    if mode != "inference":
        raise ConfigError(f"mode must be 'inference' or 'train', got {mode!r}")
    if backend not in ("torch", "onnxruntime"):
        raise ConfigError(f"backend must be 'torch' or 'onnxruntime', got {backend!r}")
    if backend == "onnxruntime":
        int8 = isinstance(dtype, str) and dtype.lower() in ("int8", "qint8")
        if compile or not (dtype in (None, torch.float32) or int8):
            raise ConfigError("backend='onnxruntime' runs fp32 or int8 without torch.compile: drop compile= and "
                              "use dtype=None or 'int8'")
        from .export.runtime import to_onnxruntime
        if not int8:
            return to_onnxruntime(model)
        if calibration is None:
            raise ConfigError("int8 quantization needs calibration images: optimize(..., calibration=folder)")
        size = getattr(getattr(model, "card", None), "test_size", 224)
        return to_onnxruntime(model, int8_calibration=_calibration_batches(calibration, size, calibration_batches))
    if isinstance(dtype, str) and dtype.lower() in ("int8_dynamic", "int8-dynamic"):
        if calibration is not None:
            raise ConfigError("dtype='int8_dynamic' takes its activation ranges from each input: drop calibration=, "
                              "or use dtype='int8' for static quantization calibrated on it")
        if compile:
            raise ConfigError("dtype='int8_dynamic' runs eagerly: under torch.compile its int8 kernel would be "
                              "replaced by its float emulation (slower than fp32); drop compile=True")
        return quantize_dynamic(model)
    if isinstance(dtype, str) and dtype.lower() in ("bf16_mixed", "bf16-mixed"):
        if calibration is not None or compile:
            raise ConfigError("dtype='bf16_mixed' runs eagerly and needs no calibration: drop calibration= and "
                              "compile=True (or use dtype=torch.bfloat16, which compiles)")
        return quantize_bf16(model)
    if isinstance(dtype, str) and dtype.lower() in ("int8", "qint8"):
        if calibration is None:
            raise ConfigError("int8 quantization needs calibration images: optimize(..., calibration=folder); "
                              "or dtype='int8_dynamic' (1x1 convs in int8, no calibration)")
        return quantize_int8(model, calibration, batches=calibration_batches, compile=compile)
    if dtype in ("bf16", "bfloat16"):
        dtype = torch.bfloat16
    if dtype not in (None, torch.float32, torch.bfloat16):
        raise ConfigError(f"dtype must be None, torch.float32, torch.bfloat16, 'bf16_mixed', 'int8' or 'int8_dynamic', "
                          f"got {dtype!r}")
    m = copy.deepcopy(model).eval()
    for p in m.parameters():
        p.requires_grad_(False)
    fuse_modules(m)
    m.eval()  # the modules fuse_modules made start in training mode, as every new nn.Module does
    m = m.to(memory_format=torch.channels_last)
    if dtype is torch.bfloat16:
        m = m.to(torch.bfloat16)
    m.register_forward_pre_hook(_to_layout_hook(dtype if dtype is torch.bfloat16 else None))
    if dtype is torch.bfloat16:
        m.register_forward_hook(_cast_back_hook)
    m.effnets_optimized = dict(mode=mode, compile=compile, dtype=str(dtype or torch.float32))
    if compile:
        if dtype is None and all(p.device.type == "cpu" for p in m.parameters()):
            for mod in m.modules():  # conv + SiLU stay effnets' kernels inside the compiled graph
                if isinstance(mod, FusedConvAct):
                    mod.native_in_graph = _MKLDNN
        opts = {"freezing": True} if compile_options is None else compile_options
        return CompiledOrEager(m, torch.compile(m, options=opts))
    return m


class CompiledOrEager(nn.Module):
    """What ``optimize(compile=True)`` returns: the Inductor-compiled model, or for an input
    shape where the eager optimized model timed faster (as ``cudnn.benchmark`` picks a conv
    algorithm), that one.  The eager model's native kernels fold squeeze-excites into GEMMs and
    reuse buffers, which the compiled graph cannot; on an AVX2 CPU efficientnet_b0 at batch 8
    ran 67.5 img/s compiled and 81.0 eager.  The choice is made on the first call per input
    (shape, dtype) in CPU inference (no grad), from five alternated timed calls of each after
    the eager model's own first calls for the shape (its per-layer choices, page-fault counts
    and kept buffers settle over three), and shown in ``chosen``: the compiled model only where
    it ran at least 5% faster.  With one warm-up call each and ties going to the compiled model, a
    ``make bench`` run kept Inductor's B0 at batch 8 (112 img/s) where the eager model ran 164.
    Anything else (autograd, CUDA, keyword arguments) runs the compiled model.  ``_orig_mod``
    is the optimized model, as on ``torch.compile``'s wrapper."""

    def __init__(self, model: nn.Module, compiled: nn.Module):
        super().__init__()
        self._orig_mod = model
        self.__dict__["compiled"] = compiled  # not a child: it wraps _orig_mod, which is one
        self.chosen: dict[tuple, str] = {}  # (input shape, dtype) -> "compiled" or "eager"

    def forward(self, *args, **kwargs):
        x = args[0] if len(args) == 1 and not kwargs else None
        if not (isinstance(x, torch.Tensor) and x.device.type == "cpu" and not torch.is_grad_enabled()):
            return self.compiled(*args, **kwargs)
        key = (tuple(x.shape), x.dtype)
        route = self.chosen.get(key)
        if route is None:
            self.compiled(x)  # compiles (or recompiles for this shape) before anything is timed
            for _ in range(2):  # with _faster's warm-up call, the eager model's first three calls
                self._orig_mod(x)
            compiled_wins = _faster(lambda: self.compiled(x), lambda: self._orig_mod(x), runs=5)
            route = self.chosen[key] = "compiled" if compiled_wins else "eager"
        return self._orig_mod(x) if route == "eager" else self.compiled(x)

    def __getattr__(self, name: str):  # model attributes (card, num_classes, ...) as torch.compile's wrapper has them
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("_orig_mod"), name)


# -- int8 ----------------------------------------------------------------------------------
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


def image_folder_batches(folder: str, size: int | tuple[int, int], batch_size: int = 8,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), limit: int | None = None
                         ) -> list[torch.Tensor]:
    """Normalized image batches from every image under ``folder`` (recursively), resized to
    ``size`` (resize shorter side + center crop), for calibration."""
    from PIL import Image
    hw = (size, size) if isinstance(size, int) else tuple(size)
    paths = sorted(os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if f.lower().endswith(IMAGE_EXTS))
    if not paths:
        raise ConfigError(f"no images ({', '.join(IMAGE_EXTS)}) under {folder!r}")
    if limit:
        paths = paths[:limit]
    m = torch.tensor(mean).view(3, 1, 1)
    s = torch.tensor(std).view(3, 1, 1)
    imgs = []
    for p in paths:
        im = Image.open(p).convert("RGB")
        scale = max(hw[0] / im.height, hw[1] / im.width)
        im = im.resize((max(hw[1], round(im.width * scale)), max(hw[0], round(im.height * scale))), Image.BICUBIC)
        left, top = (im.width - hw[1]) // 2, (im.height - hw[0]) // 2
        im = im.crop((left, top, left + hw[1], top + hw[0]))
        t = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(hw[0], hw[1], 3)
        imgs.append((t.permute(2, 0, 1).float() / 255 - m) / s)
    return [torch.stack(imgs[i:i + batch_size]) for i in range(0, len(imgs), batch_size)]


def _calibration_batches(calibration, size, batches: int) -> list[torch.Tensor]:
    if isinstance(calibration, (str, os.PathLike)):
        out = image_folder_batches(os.fspath(calibration), size)
    elif isinstance(calibration, torch.Tensor):
        if calibration.ndim != 4:
            raise ConfigError(f"a calibration tensor must be (N, C, H, W), got shape {tuple(calibration.shape)}")
        out = list(calibration.split(8))
    elif isinstance(calibration, Iterable):
        out = []
        for b in calibration:
            out.append(b[0] if isinstance(b, (tuple, list)) else b)
            if len(out) >= batches:
                break
    else:
        raise ConfigError(f"calibration must be a folder, a tensor or an iterable of batches, got {type(calibration)}")
    if not out:
        raise ConfigError("calibration data is empty")
    return out[:batches]


def _first_conv(model: nn.Module) -> str | None:
    """Name of the first convolution in module order: the one that reads the image."""
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


_NONLINEAR = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Mish,
              nn.LeakyReLU, nn.ELU)


def _default_fp32_layers(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The layers :func:`quantize_int8` leaves in fp32 by default, found from the module types and
    one forward pass on ``x`` (no model names): the first convolution (it reads the image), every
    depthwise convolution (groups == in_channels > 1), every module whose input is larger than
    1x1 and whose convolutions all see a 1x1 (pooled) input, i.e. squeeze-excite (kept whole,
    with its gate multiply), and every linear projection, a convolution whose next executed
    leaf module (BatchNorm skipped) is not a nonlinearity."""
    parent = {n: p for p, mod in model.named_modules() for c, _ in mod.named_children()
              for n in [f"{p}.{c}" if p else c]}
    order: list[tuple[str, nn.Module, tuple]] = []
    hooks = [mod.register_forward_hook(lambda mod, a, o, n=n: order.append(
                 (n, mod, tuple(a[0].shape) if a and isinstance(a[0], torch.Tensor) else ())))
             for n, mod in model.named_modules() if not any(True for _ in mod.children())]
    seen: dict[str, tuple] = {}  # module -> its input's shape (to tell pooling from a tiny image)

    def note_input(name: str) -> Callable:
        def hook(mod, args) -> None:  # returns None: the arguments pass unchanged
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, tuple(args[0].shape))
        return hook

    hooks += [mod.register_forward_pre_hook(note_input(n)) for n, mod in model.named_modules() if n]
    forward_with_hooks(model, x, hooks)
    keep = [_first_conv(model)]
    pooled: dict[str, bool] = {}  # parent -> all of its convs see a 1x1 input
    for i, (n, mod, shape) in enumerate(order):
        if not isinstance(mod, nn.Conv2d) or n in keep:
            continue
        if mod.groups > 1 and mod.groups == mod.in_channels:
            keep.append(n)
            continue
        if len(shape) == 4 and shape[2] * shape[3] == 1:
            p = parent.get(n, "")
            pooled[p] = pooled.get(p, True)
            continue
        if p := parent.get(n, ""):
            pooled[p] = False
        nxt = next((m2 for _, m2, _ in order[i + 1:] if not isinstance(m2, nn.modules.batchnorm._BatchNorm)), None)
        if not isinstance(nxt, _NONLINEAR):
            keep.append(n)
    for p, all_pooled in pooled.items():
        if all_pooled and p and len(seen.get(p, ())) == 4 and seen[p][2] * seen[p][3] > 1:  # squeeze-excite
            keep = [k for k in keep if not k.startswith(p + ".")] + [p]
    return [k for k in keep if k is not None]


def quantize_int8(model: nn.Module, calibration, *, batches: int = 32, compile: bool = False,
                  backend: str = "x86", keep_fp32: Iterable[str] | None = None,
                  reduce_range: bool | None = None) -> nn.Module:
    """Post-training static int8 quantization (per-channel weights, per-tensor activations),
    torch.ao FX graph mode with the ``x86`` backend (oneDNN / FBGEMM int8 kernels, no compile
    needed).  BN is folded first; convs, linears, ReLU/ReLU6/hard-swish and additions run in
    int8.  Observers are calibrated on ``calibration`` (a folder of images, a tensor or an
    iterable of batches).  The converted graph's float glue then runs on effnets' kernels
    (:mod:`effnets.int8_glue`: SiLU between int8 layers by a 256-entry table, squeeze-excite
    product and pooling on the stored bytes).

    Accuracy or speed, measured on B0 trained on digits (``benchmarks/lowprec.py`` data, 2
    threads, img/s relative to the fp32 ``optimize`` model, two one-off runs): the default below
    keeps 98.6% agreement but runs at 0.48-0.51x (b1) / 0.70-0.72x (b8): its fp32 layers run as
    plain PyTorch ops between (de)quantize steps.  ``keep_fp32=[<the first conv>]`` (the default
    before session 10) runs 0.38-0.56x / 1.18-1.49x at 93.2% agreement.  Neither reaches 2x at 98%.
    :func:`quantize_dynamic` (no calibration, per-pixel activation ranges) kept 100% agreement
    there at 1.21-1.30x fp32's speed.

    Two choices differ from torch.ao's x86 defaults, both measured (``benchmarks/lowprec.py``,
    top-1 agreement with fp32 on held-out images):

    * ``keep_fp32``: module names left in fp32.  Default (None): the layers found by
      ``_default_fp32_layers`` from module types and one forward pass (never from model names):
      the first convolution, which reads the normalised image (Krishnamoorthi 2018, arXiv
      1806.08342), every depthwise convolution, every squeeze-excite module (a module whose
      convolutions all see a 1x1 input pooled inside it; its gate multiply stays fp32 with it)
      and every linear projection (a convolution not followed by a nonlinearity, e.g. the
      MBConv ``conv_pwl``).  The error is not in one layer: on B0 trained on digits (64
      calibration images, 355 held-out, agreement with fp32; speed as batch-8 img/s at 1 thread
      relative to the stem-only choice, before the glue kernels) only the stem in fp32 gives
      92%; keeping any single block or layer group moves it by at most 2 points (head,
      classifier, last stage: 92-94%; depthwise 94%); the weights alone in int8 give 99.7%, so activations are what costs:
      per-tensor ranges over channels whose ranges differ 10x, and torch.ao quantizes each conv
      output *before* SiLU (an int8 range spent on a negative tail SiLU flattens).  Other
      observers or more images do not fix it (MinMax 91%, moving-average 94%, 2048->8192 bins
      93%, 256 images 93%).  Depthwise + squeeze-excite in fp32: 97% and 1.5x faster (torch's
      int8 depthwise conv and quantized mean/mul are slower than fp32 ones); + linear
      projections: 98.0% (int8 top-1 0.952, fp32 0.958) and 1.2x faster than stem-only
      without the glue kernels (with them stem-only is 2x faster again); the pointwise
      expansions (most of the FLOPs), the residual additions, the head and the classifier
      stay int8.
    * ``reduce_range``: torch.ao always drops one activation bit, which rules out int16
      saturation in the u8 x s8 multiply-add of CPUs without VNNI.  Which costs more depends
      on the model: on the digits B0 the 7-bit range gives 75% agreement and the 8-bit one 97%;
      on a small trained MobileNetV1 (tests) 7-bit gives 99% and 8-bit saturates to 79%.  So
      by default (None) both are calibrated and the one whose logits are closer to fp32 on
      the calibration batches is kept (twice the calibration time); True/False forces one."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    size = getattr(getattr(model, "card", None), "test_size", 224)
    data = _calibration_batches(calibration, size, batches)
    m = copy.deepcopy(model).eval()
    names = dict(m.named_modules())
    keep = _default_fp32_layers(m, data[0][:1]) if keep_fp32 is None else list(keep_fp32)
    for name in keep:
        if name is not None and name not in names:
            raise ConfigError(f"keep_fp32: no module named {name!r} in the model (see model.named_modules())")
    torch.backends.quantized.engine = backend

    glue: dict[str, int] = {}

    def convert(rr: bool) -> nn.Module:
        qmap = get_default_qconfig_mapping(backend).set_global(
            QConfig(activation=HistogramObserver.with_args(reduce_range=rr),
                    weight=default_per_channel_weight_observer))
        for name in keep:
            if name is not None:
                qmap = qmap.set_module_name(name, None)
        with torch.no_grad():
            prepared = prepare_fx(copy.deepcopy(m), qmap, (data[0][:1],))
            for b in data:
                prepared(b)
            q = convert_fx(prepared)
        glue.update(fuse_int8_glue(q))  # activations, gate products, pooling: effnets' kernels
        return q

    errors = {}
    if reduce_range is None:
        with torch.inference_mode():
            ref = torch.cat([m(b) for b in data]).float()
            cands = {rr: convert(rr) for rr in (False, True)}
            for rr, cand in cands.items():
                out = torch.cat([cand(b) for b in data]).float()
                errors[rr] = ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()
        reduce_range = min(errors, key=errors.get)
        q = cands[reduce_range]
    else:
        q = convert(reduce_range)
    q.effnets_optimized = dict(mode="inference", compile=compile, dtype="int8", keep_fp32=[k for k in keep if k],
                               reduce_range=reduce_range,
                               calibration_rel_error={f"reduce_range={k}": v for k, v in errors.items()},
                               native_glue=glue)
    if compile:
        return torch.compile(q)
    return q


def _gemm_layers(m: nn.Module, min_channels: int = 0):
    """(name, module) of every layer of an optimized model that the low-precision GEMMs can run
    (``quantize_dynamic``, ``quantize_bf16``): 1x1 stride-1 convs whose activation the native
    epilogue has (their ``pw_act`` set here, even where the kernels are unavailable) and linear
    layers, with at least ``min_channels`` input channels."""
    for name, mod in m.named_modules():
        act = _gemm_act(mod.weight.shape, mod.groups, mod.stride, mod.padding, mod.attr, mod.scalars,
                        mod.algorithm) \
            if isinstance(mod, FusedConvAct) else None
        if (act is not None or isinstance(mod, FastLinear)) and mod.weight.shape[1] >= min_channels:
            if act is not None:
                mod.pw_act = act
            yield name, mod


def quantize_dynamic(model: nn.Module, *, min_channels: int = 0) -> nn.Module:
    """An :func:`optimize`-d copy of ``model`` whose 1x1 convolutions run in int8 on effnets'
    kernel (``kernels.pointwise_q8``): weights rounded to int8 once, one scale per output
    channel; activations rounded to 8 bits on the fly, **one range per pixel** (each pixel's
    input channels, after the squeeze-excite gate where one is folded in: dynamic per-token
    quantization); int8 x int8 products summed exactly in int32 (AVX512-VNNI), bias, activation
    and residual in fp32 in the epilogue.  Nothing to calibrate: the ranges come from each input.
    Linear layers (the classifier; every linear of an attention model) likewise: int8 weights,
    each input row (the last dimension) rounded over its own range (``FastLinear``).  Everything else (image conv, depthwise convs, squeeze-excite, 3x3
    convs) runs as in the fp32 ``optimize`` model.

    Why per pixel: static per-tensor activation ranges (``quantize_int8``) lose agreement on
    EfficientNet because channel ranges differ ~10x; a per-pixel range follows every input.
    Cost: one pass per row of input (range, then bytes) inside the GEMM, while the row is in L1.
    Where it pays: 1x1 convs with many input channels (B0's later stages run 2-3.5x faster than
    the fp32 GEMM); with few (16-32) the fp32 epilogue and the rounding pass dominate and int8
    gains nothing: ``min_channels`` keeps convs with fewer input channels in fp32.  Exports,
    traces, compiles and other devices run the same arithmetic in PyTorch ops
    (``kernels.quantize_rows`` + a conv with the dequantized weight), so an exported model
    computes what the eager one does.  Without VNNI
    the kernel runs AVX2 code (16-bit multiply-adds, the same sums): B0's 1x1 convs at 0.89x the
    fp32 GEMM's AVX2 speed (b8, one-off), so int8_dynamic pays off on VNNI CPUs; with neither it
    runs plain C and warns."""
    if min_channels < 0:
        raise ConfigError(f"min_channels must be >= 0, got {min_channels}")
    m = optimize(model)
    names = []
    for name, mod in _gemm_layers(m, min_channels):
        with torch.no_grad():  # the weight as the int8 GEMM sees it (a linear's as a 1x1 conv's)
            w4 = mod.weight if mod.weight.ndim == 4 else mod.weight[:, :, None, None]
            mod.weight.copy_(kernels.pointwise_weight_q8(w4)[2].reshape(mod.weight.shape))
        mod.int8 = True
        names.append(name)
    isa = kernels.int8_isa()
    if isa == 0 and names:
        warnings.warn("quantize_dynamic: this CPU has neither AVX512-VNNI nor AVX2, so the int8 1x1 convs run "
                      "plain C code, several times slower than the fp32 optimize() model", RuntimeWarning,
                      stacklevel=2)
    m.effnets_optimized = dict(mode="inference", compile=False, dtype="int8_dynamic", int8_layers=names,
                               min_channels=min_channels, vnni=isa >= 2,
                               int8_code={**kernels.INT8_LEVELS, -1: "pytorch"}[isa])
    return m


def quantize_bf16(model: nn.Module) -> nn.Module:
    """An :func:`optimize`-d copy of ``model`` whose 1x1 convolutions and linear layers multiply in
    bf16 on effnets' kernel (``kernels.pointwise_bf16``): the weight rounded to bf16 once (nearest
    even), each input row rounded to bf16 on the fly (after the squeeze-excite gate where one is
    folded in), the products (exact in fp32) summed in fp32 by AVX512-BF16's ``vdpbf16ps`` (twice
    the multiply-adds of an fp32 FMA per instruction); bias, activation, residual and everything
    else (image conv, depthwise and 3x3 convs, squeeze-excite) in fp32, so activations between
    layers stay fp32, as under ``torch.autocast(dtype=torch.bfloat16)``.  Where the 1x1 convs
    dominate this is the fastest precise mode on a CPU with AVX512-BF16 but no AMX (AMD Zen 4,
    Intel Cooper Lake), where ``dtype=torch.bfloat16``'s oneDNN bf16 convs are slower than fp32.
    Exports, traces, compiles, other devices and CPUs without AVX512-BF16 run the same arithmetic in
    PyTorch ops (the input rounded to bf16, then the float conv with the rounded weight); the last
    warn, as that is slower than fp32."""
    m = optimize(model)
    names = []
    for name, mod in _gemm_layers(m):
        with torch.no_grad():
            mod.weight.copy_(kernels.round_bf16(mod.weight))
        mod.bf16 = True
        names.append(name)
    if names and not kernels.bf16_fast():
        warnings.warn("quantize_bf16: this CPU has no AVX512-BF16 (or effnets' kernels are off), so the bf16 1x1 "
                      "convs run as float convs on bf16-rounded inputs, slower than the fp32 optimize() model",
                      RuntimeWarning, stacklevel=2)
    m.effnets_optimized = dict(mode="inference", compile=False, dtype="bf16_mixed", bf16_layers=names,
                               native=kernels.bf16_fast())
    return m


__all__ = ["optimize", "CompiledOrEager", "fold_bn", "fuse_modules", "FusedConvAct", "FastLinear", "FastSqueezeExcite", "quantize_int8",
           "quantize_dynamic", "quantize_bf16", "image_folder_batches"]
