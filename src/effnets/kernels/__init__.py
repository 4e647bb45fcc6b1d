"""Native CPU kernels, compiled on first use, float32 (``native.c`` says why): fused training
BatchNorm + activation (forward and backward) and SiLU, channels-last or NCHW; depthwise
convolution, channels-last (training backward; inference forward with bias, activation and the
channel sums a squeeze-excite needs); the inference squeeze-excite in one call (optionally with
the residual sum and output activation); the training backward of the squeeze-excite gate
product; the transforms of Winograd F(4x4, 3x3) convolution; the inference 1x1 convolution (a
GEMM with bias, activation and residual in its epilogue, writing into a caller's buffer), and
other dense convolutions as that GEMM on patches gathered per block of output pixels.

Nothing here is required: :func:`library` is None when there is no C compiler or with
``EFFNETS_NO_NATIVE=1`` (:func:`supports` / :func:`supports_depthwise` also say no for
non-float32 or non-CPU tensors), and callers then run the plain PyTorch ops, which compute the
same thing (tests hold the two paths to each other).
The shared library is built once per source version into ``$EFFNETS_CACHE`` (default
``~/.cache/effnets``) with ``$CC`` (default ``cc``), in about a second.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading

import time

import torch

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native.c")
_FLAGS = ["-O2", "-fopenmp", "-shared", "-fPIC"]
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
why_unavailable: str | None = None

# fused with training BatchNorm, the inference depthwise conv and the GEMM epilogues; "gelu" the
# exact (erf) GELU
ACT_CODES = {"identity": 0, "silu": 1, "relu": 2, "hardswish": 3, "relu6": 4, "gelu": 7}
DW_ACT_CODES = dict(ACT_CODES)
SE_ACT_CODES = {**DW_ACT_CODES, "sigmoid": 5, "hardsigmoid": 6}  # squeeze-excite act and gate


def _cache_dir() -> str:
    root = os.environ.get("EFFNETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "effnets")
    return os.path.join(root, "kernels")


def _build() -> ctypes.CDLL:
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not on PATH)")
    with open(_SRC, "rb") as f:
        src = f.read()
    key = hashlib.sha256(src + " ".join([cc] + _FLAGS + [platform.machine()]).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    path = os.path.join(out_dir, f"effnets_native_{key}.so")
    if not os.path.exists(path):
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
        os.close(fd)
        try:  # build to a temporary name, then rename: safe when several processes race (DDP)
            r = subprocess.run([cc, *_FLAGS, "-o", tmp, _SRC], capture_output=True, text=True, timeout=180)
            if r.returncode != 0:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-500:]}")
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(path)
    p, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    lib.eff_bn_act_fwd.argtypes = [p, p, i64, i64, i64, p, p, p, p, f64, f64, p, p, i32, i32]
    lib.eff_bn_act_bwd.argtypes = [p, p, p, i64, i64, i64, p, p, p, p, p, p, i32, i32]
    lib.eff_act.argtypes = [p, p, i64, i32, i32]
    lib.eff_gelu_bwd.argtypes = [p, p, p, p, i64, i32]
    lib.eff_act.restype = lib.eff_gelu_bwd.restype = None
    lib.eff_dw_bwd_input.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i32, i32, i32, i32, i32]
    lib.eff_dw_bwd_weight.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i32, i32, i32, i32, i32]
    lib.eff_dw_fwd.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i64, i32, i32, i32, i32, i32, i32]
    lib.eff_se_gate.argtypes = [p, p, ctypes.c_float, p, p, p, p, p, p, i64, i64, i64, i64, i32, i32, i32, i32]
    lib.eff_dw_bwd_input.restype = lib.eff_dw_bwd_weight.restype = lib.eff_dw_fwd.restype = None
    lib.eff_se_gate.restype = None
    lib.eff_gate_bwd.argtypes = [p, p, p, p, p, i64, i64, i64, i32]
    lib.eff_gate_bwd.restype = None
    lib.eff_pw_fwd.argtypes = [p, p, p, p, p, i64, p, i64, i64, i64, i32, i32]
    lib.eff_pw_fwd.restype = None
    lib.eff_pw_set_stream_bytes.argtypes = [i64]  # outputs above this go out by streaming stores
    lib.eff_pw_set_stream_bytes.restype = i64  # the previous threshold
    lib.eff_pw_set_prefetch_bytes.argtypes = [i64]  # inputs above this: each tile prefetches the next one's rows
    lib.eff_pw_set_prefetch_bytes.restype = i64
    if hasattr(lib, "eff_wino_in"):  # x86 builds only
        lib.eff_wino_in.argtypes = [p, p, i64, i64, i64, i64, i64, i64, i32, i32, i64, i64, i32]
        lib.eff_wino_out.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i64, i64, i32, i32]
        lib.eff_wino_in.restype = lib.eff_wino_out.restype = None
        lib.eff_wino_fused.argtypes = [p, p, p, p, i64, i64, i64, i64, i64, i64, i64, i32, i32, i32, i64, i32]
        lib.eff_wino_set_stream_bytes.argtypes = [i64]  # eff_wino_fused's outputs from this size on: streaming stores
        lib.eff_wino_set_stream_bytes.restype = i64  # the previous threshold
        lib.eff_wino_fused.restype = i32  # -1: out of memory
        lib.eff_wino_pw_fused.argtypes = [p, p, p, i64, i64, i64, i64, i64, i64, i64, i32, i32, i32, p, p, p, p, i64,
                                          i32, i64, i32]
        lib.eff_wino_pw_fused.restype = i32  # -1: out of memory
    lib.eff_q_lut.argtypes = [p, p, i64, p, i32]
    lib.eff_q_lut.restype = None
    lib.eff_q_gate_mul.argtypes = [p, p, p, i64, i64, i64, ctypes.c_float, i32, ctypes.c_float, i32, i32]
    lib.eff_q_gate_mul.restype = None
    lib.eff_q_from_float.argtypes = [p, p, i64, i32, ctypes.c_float, i32, i32]
    lib.eff_q_from_float.restype = None
    lib.eff_q_channel_sums.argtypes = [p, p, i64, i64, i64, i32]
    lib.eff_q_channel_sums.restype = None
    lib.eff_bf16_channel_sums.argtypes = [p, p, i64, i64, i64, i32]
    lib.eff_bf16_channel_sums.restype = None
    lib.eff_pw_q8_fwd.argtypes = [p, p, i64, p, p, p, i64, p, i64, i64, i64, i32, i32]
    lib.eff_pw_q8_fwd.restype = i32  # -1: out of memory
    lib.eff_q8_isa.restype = i32
    lib.eff_q8_set_isa.argtypes = [i32]
    lib.eff_q8_set_isa.restype = i32
    lib.eff_have_avx2.restype = i32
    lib.eff_have_avx512.restype = i32
    lib.eff_set_avx512.argtypes = [i32]
    lib.eff_set_avx512.restype = i32
    lib.eff_pw_bf16_fwd.argtypes = [p, p, i64, p, p, p, i64, p, i64, i64, i64, i32, i32]
    lib.eff_pw_bf16_fwd.restype = i32  # -1: out of memory, -2: no AVX512-BF16
    lib.eff_bf16_fast.restype = i32
    lib.eff_fma_peak.argtypes = [i64, i32]
    lib.eff_fma_peak.restype = f64
    lib.eff_pw_dw_fwd.argtypes = [p, p, p, i64, i32, i32, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, i32, i32, i32,
                                  i32, i32, i32]
    lib.eff_pw_dw_fwd.restype = i32
    lib.eff_conv_fwd.argtypes = [p, p, p, p, p, i64, i64, i64, i64, i64, i64, i64, i32, i32, i32, i32, i32, i32, i32]
    lib.eff_conv_fwd.restype = i32  # -1: out of memory
    lib.eff_dw_set_blocks.argtypes = [i32]
    lib.eff_dw_set_blocks.restype = i32
    lib.eff_dw_last_blocked.restype = i32
    lib.eff_bn_act_fwd.restype = lib.eff_bn_act_bwd.restype = None
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (the reason is in ``why_unavailable``)."""
    global _LIB, _TRIED, why_unavailable
    if _TRIED:
        return _LIB
    with _LOCK:
        if not _TRIED:
            if os.environ.get("EFFNETS_NO_NATIVE", "0") == "1":
                why_unavailable = "disabled by EFFNETS_NO_NATIVE=1"
            else:
                try:
                    _LIB = _build()
                except (OSError, RuntimeError, subprocess.SubprocessError, AttributeError) as e:
                    why_unavailable = str(e)  # AttributeError: a symbol _build expects is missing
            _TRIED = True
    return _LIB


def _layout(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(outer, C, inner) of a 4-D float32 CPU tensor the kernels can read, else None."""
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.ndim != 4:
        return None
    n, c, h, w = t.shape
    if t.is_contiguous(memory_format=torch.channels_last):  # also true for 1x1 maps, where both agree
        return n * h * w, c, 1
    if t.is_contiguous():
        return n, c, h * w
    return None


def supports(y: torch.Tensor, act: str) -> bool:
    return act in ACT_CODES and _layout(y) is not None and library() is not None


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _output(out: torch.Tensor | None, shape: tuple) -> torch.Tensor:
    """``out`` checked to be a channels-last float32 CPU tensor of ``shape``, or a new one."""
    if out is None:
        return torch.empty(shape, dtype=torch.float32, memory_format=torch.channels_last)
    if (tuple(out.shape) != tuple(shape) or out.dtype != torch.float32 or out.device.type != "cpu"
            or not out.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"out must be a channels-last float32 CPU tensor shaped {tuple(shape)}, got {out.dtype} "
                         f"{tuple(out.shape)} on {out.device}")
    return out


def _param(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` as a contiguous float32 tensor whose data_ptr the kernels may read (``t`` itself when it
    already is one: the kernels only read it, and the three calls otherwise cost ~4 us)."""
    if t is None or (t.dtype == torch.float32 and t.is_contiguous()):
        return t
    return t.detach().float().contiguous()


def bn_act_forward(y: torch.Tensor, weight, bias, running_mean, running_var, momentum: float, eps: float,
                   act: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``act(batch_norm(y))`` with batch statistics; updates the running statistics in place
    (as nn.BatchNorm2d does). Returns (output, mean, invstd). Call only if :func:`supports`."""
    outer, c, inner = _layout(y)
    for buf in (running_mean, running_var):
        if buf is not None and (buf.dtype != torch.float32 or not buf.is_contiguous()):
            raise ValueError("running statistics must be contiguous float32 tensors")
    out = torch.empty_like(y)
    mean = torch.empty(c, dtype=torch.float32)
    invstd = torch.empty(c, dtype=torch.float32)
    w, b = _param(weight), _param(bias)
    library().eff_bn_act_fwd(y.data_ptr(), out.data_ptr(), outer, c, inner, _ptr(w), _ptr(b), _ptr(running_mean),
                             _ptr(running_var), float(momentum), float(eps), mean.data_ptr(), invstd.data_ptr(),
                             ACT_CODES[act], torch.get_num_threads())
    return out, mean, invstd


def bn_act_backward(g: torch.Tensor, y: torch.Tensor, weight, bias, mean: torch.Tensor, invstd: torch.Tensor,
                    act: str, need_wb: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dy, dweight, dbias) of :func:`bn_act_forward` given the output gradient ``g``."""
    outer, c, inner = _layout(y)
    fmt = torch.channels_last if inner == 1 and not y.is_contiguous() else torch.contiguous_format
    g = g.contiguous(memory_format=fmt)
    if _layout(g) != (outer, c, inner):
        g = g.contiguous(memory_format=torch.channels_last if inner == 1 else torch.contiguous_format)
    dx = torch.empty_like(y)
    w, b = _param(weight), _param(bias)
    dw = torch.empty(c, dtype=torch.float32) if need_wb and weight is not None else None
    db = torch.empty(c, dtype=torch.float32) if need_wb and bias is not None else None
    library().eff_bn_act_bwd(g.data_ptr(), y.data_ptr(), dx.data_ptr(), outer, c, inner, _ptr(w), _ptr(b),
                             mean.data_ptr(), invstd.data_ptr(), _ptr(dw), _ptr(db), ACT_CODES[act],
                             torch.get_num_threads())
    return dx, dw, db


def silu_(x: torch.Tensor) -> torch.Tensor:
    """In-place SiLU of a contiguous float32 CPU tensor (plain ``F.silu_`` otherwise)."""
    lib = library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32 or not (
            x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return torch.nn.functional.silu(x, inplace=True)
    lib.eff_act(x.data_ptr(), x.data_ptr(), x.numel(), ACT_CODES["silu"], torch.get_num_threads())
    return x


def _dense_f32(*ts: torch.Tensor) -> bool:
    """CPU float32 tensors of one shape, each contiguous in memory, and the kernels built."""
    return (library() is not None and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                                          and t.shape == ts[0].shape for t in ts))


def act_out(x: torch.Tensor, act: str) -> torch.Tensor | None:
    """``act(x)`` as a new tensor (``act`` a key of ``DW_ACT_CODES``, "gelu" the exact GELU)
    for a contiguous float32 CPU ``x``; None otherwise (the caller runs PyTorch's op)."""
    if not _dense_f32(x):
        return None
    out = torch.empty_like(x)
    library().eff_act(x.data_ptr(), out.data_ptr(), x.numel(), DW_ACT_CODES[act], torch.get_num_threads())
    return out


def gelu_backward(g: torch.Tensor, h: torch.Tensor, want_gelu: bool) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(g * GELU'(h), GELU(h) if want_gelu)`` in one pass over ``h`` (exact GELU, erf as in
    the epilogues), for contiguous float32 CPU tensors of one shape; None otherwise."""
    if not _dense_f32(g, h):
        return None
    dh = torch.empty_like(h)
    a = torch.empty_like(h) if want_gelu else None
    library().eff_gelu_bwd(g.data_ptr(), h.data_ptr(), dh.data_ptr(), _ptr(a), h.numel(), torch.get_num_threads())
    return dh, a


def supports_depthwise(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """True when :func:`depthwise_backward` can compute the gradients of ``conv(x)``: float32
    CPU, a depthwise conv (one filter per channel), square kernel up to 11, equal strides,
    no dilation, numeric zero padding."""
    w = conv.weight
    c = x.shape[1] if x.ndim == 4 else -1
    return (x.ndim == 4 and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and conv.groups == c == conv.out_channels and w.shape[1] == 1 and w.shape[2] == w.shape[3] <= 11
            and conv.stride[0] == conv.stride[1] and tuple(conv.dilation) == (1, 1)
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros" and library() is not None)


def depthwise_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                       padding: tuple[int, int], need_dx: bool = True, need_dw: bool = True
                       ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients of a depthwise conv (see :func:`supports_depthwise`), from the
    output gradient ``dy``; both computed channels-last, dw summed in float64."""
    lib = library()
    n, c, h, w = x.shape
    k = weight.shape[-1]
    oh, ow = dy.shape[2:]
    x = x.contiguous(memory_format=torch.channels_last)
    dy = dy.contiguous(memory_format=torch.channels_last)
    dims = (n, h, w, c, oh, ow, k, stride, padding[0], padding[1], torch.get_num_threads())
    dx = dw = None
    if need_dx:
        wt = depthwise_taps(weight)  # taps x channels: vector loads
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        lib.eff_dw_bwd_input(dy.data_ptr(), wt.data_ptr(), dx.data_ptr(), *dims)
    if need_dw:
        dwt = torch.empty(k * k, c, dtype=torch.float64)
        lib.eff_dw_bwd_weight(dy.data_ptr(), x.data_ptr(), dwt.data_ptr(), *dims)
        dw = dwt.t().reshape(c, 1, k, k).to(weight.dtype).contiguous()
    return dx, dw


def depthwise_forward(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      padding: tuple[int, int], act: str = "identity", channel_sums: bool = False,
                      out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``act(depthwise_conv(x) + bias)`` for inference, channels-last float32 CPU, where
    ``taps`` is the weight as (K*K, C) (see :func:`depthwise_taps`); with ``channel_sums``
    also the (N, C) sums of the output over its pixels.  ``act`` is a key of
    ``DW_ACT_CODES``; ``out``: a channels-last float32 tensor of the output's shape to write
    into.  Call only where :func:`library` is not None and no gradient is needed."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"depthwise_forward needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    n, c, h, w = x.shape
    kk = taps.shape[0]
    k = int(round(kk ** 0.5))
    if k * k != kk or taps.shape[1] != c or k > 11:
        raise ValueError(f"taps must be (K*K, C) with K <= 11 for {c} channels, got {tuple(taps.shape)}")
    oh = (h + 2 * padding[0] - k) // stride + 1
    ow = (w + 2 * padding[1] - k) // stride + 1
    y = _output(out, (n, c, oh, ow))
    sums = torch.empty((n, c), dtype=torch.float32) if channel_sums else None
    depthwise_into(x.contiguous(memory_format=torch.channels_last), taps.float().contiguous(), _param(bias), y, sums,
                   stride, padding, DW_ACT_CODES[act])
    return y, sums


def se_gate_(x: torch.Tensor, mean: torch.Tensor | None, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
             b2: torch.Tensor, act: str, gate: str, residual: torch.Tensor | None = None,
             out_act: str = "identity", mean_scale: float = 1.0) -> torch.Tensor:
    """Squeeze-excite for inference, in place: ``x *= gate(w2 act(w1 mean + b1) + b2)`` per image
    and channel, ``x`` channels-last float32 (N, C, H, W), ``mean`` (N, C) its spatial means
    (None: taken here, in one pass), ``w1`` (R, C), ``w2`` (C, R); ``act``/``gate`` keys of
    ``SE_ACT_CODES``.  With ``residual`` (shaped like ``x``) the same pass computes
    ``x = out_act(x * gate + residual)``.  ``mean_scale``: ``mean`` is multiplied by it first (channel
    sums and 1 / (H * W), without a division op of their own).  Returns ``x``.  Call only where
    :func:`library` is not None and no gradient is needed."""
    n, c, h, w = x.shape
    if x.dtype != torch.float32 or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"se_gate_ needs a channels-last float32 CPU tensor, got {x.dtype} on {x.device}")
    r = w1.shape[0]
    if (mean is not None and tuple(mean.shape) != (n, c)) or tuple(w1.shape) != (r, c) or tuple(w2.shape) != (c, r):
        raise ValueError(f"se_gate_: mean {None if mean is None else tuple(mean.shape)}, w1 {tuple(w1.shape)}, "
                         f"w2 {tuple(w2.shape)} do not fit {c} channels")
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"se_gate_: residual {tuple(residual.shape)} does not match x {tuple(x.shape)}")
        residual = residual.float().contiguous(memory_format=torch.channels_last)
    if out_act not in SE_ACT_CODES:
        raise ValueError(f"out_act must be one of {sorted(SE_ACT_CODES)}, got {out_act!r}")
    gates = torch.empty((n, c), dtype=torch.float32)
    mean = _param(mean)
    args = [_param(t) for t in (w1, b1, w2, b2)]
    library().eff_se_gate(x.data_ptr(), _ptr(mean), mean_scale, *(t.data_ptr() for t in args), gates.data_ptr(),
                          _ptr(residual),
                          n, h * w, c, r, SE_ACT_CODES[act], SE_ACT_CODES[gate], SE_ACT_CODES[out_act],
                          torch.get_num_threads())
    return x


def se_gates(mean: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
             act: str, gate: str) -> torch.Tensor:
    """A squeeze-excite's gates without the product: ``gate(w2 act(w1 mean + b1) + b2)``, (N, C)
    float32, from the (N, C) channel means; for a caller that folds them into the next 1x1 conv
    (:func:`pointwise_conv` ``gate=``).  Call only where :func:`library` is not None."""
    n, c = mean.shape
    r = w1.shape[0]
    if tuple(w1.shape) != (r, c) or tuple(w2.shape) != (c, r) or b1.numel() != r or b2.numel() != c:
        raise ValueError(f"se_gates: w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)} do not fit {c} channels")
    if act not in SE_ACT_CODES or gate not in SE_ACT_CODES:
        raise ValueError(f"se_gates: act and gate must be among {sorted(SE_ACT_CODES)}, got {act!r}, {gate!r}")
    return se_gates_into(_param(mean), *(_param(t) for t in (w1, b1, w2, b2)), torch.empty((n, c), dtype=torch.float32),
                         SE_ACT_CODES[act], SE_ACT_CODES[gate])


def se_gates_into(mean: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
                  out: torch.Tensor, act_code: int, gate_code: int, mean_scale: float = 1.0) -> torch.Tensor:
    """:func:`se_gates` into ``out`` without its checks (~10 us per call at batch 1), for a caller
    that made them once: every tensor contiguous float32 CPU, ``mean`` and ``out`` (N, C), ``w1``
    (R, C), ``w2`` (C, R), codes from ``SE_ACT_CODES``; ``mean`` is multiplied by ``mean_scale``
    first (channel sums and 1 / (H * W)).  ``effnets.optimize`` calls it."""
    n, c = mean.shape
    library().eff_se_gate(None, mean.data_ptr(), mean_scale, w1.data_ptr(), b1.data_ptr(), w2.data_ptr(),
                          b2.data_ptr(), out.data_ptr(), None, n, 1, c, w1.shape[0], act_code, gate_code, 0,
                          torch.get_num_threads())
    return out


def _quint8_layout(x: torch.Tensor) -> torch.memory_format | None:
    """The memory format in which the quint8 CPU tensor ``x`` is dense, else None."""
    if x.dtype != torch.quint8 or x.device.type != "cpu" or x.qscheme() != torch.per_tensor_affine:
        return None
    if x.is_contiguous():
        return torch.contiguous_format
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return None


def quantized_lut(x: torch.Tensor, lut: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor | None:
    """``lut[x]`` per byte of the quint8 tensor ``x`` (per-tensor affine, dense), as a new quint8
    tensor of the same shape and layout with ``scale`` / ``zero_point``; ``lut`` 256 uint8 values.
    None where ``x`` is not such a tensor or the kernels are not built (the caller falls back)."""
    fmt = _quint8_layout(x)
    if fmt is None or library() is None or lut.dtype != torch.uint8 or lut.numel() != 256:
        return None
    lut = lut.contiguous()  # held here: a temporary's memory could be freed before the call reads it
    y = torch._empty_affine_quantized(x.shape, scale=scale, zero_point=zero_point, dtype=torch.quint8,
                                      memory_format=fmt)
    library().eff_q_lut(x.data_ptr(), y.data_ptr(), x.numel(), lut.data_ptr(), torch.get_num_threads())
    return y


def quantize_act(x: torch.Tensor, act: str, scale: float, zero_point: int) -> torch.Tensor | None:
    """``quantize_per_tensor(act(x), scale, zero_point, quint8)`` for a dense float32 CPU ``x`` in one
    pass, ``act`` a key of ``DW_ACT_CODES``; None where that does not apply."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or act not in DW_ACT_CODES or library() is None:
        return None
    fmt = torch.channels_last if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) else (
        torch.contiguous_format if x.is_contiguous() else None)
    if fmt is None:
        return None
    y = torch._empty_affine_quantized(x.shape, scale=scale, zero_point=zero_point, dtype=torch.quint8,
                                      memory_format=fmt)
    library().eff_q_from_float(x.data_ptr(), y.data_ptr(), x.numel(), DW_ACT_CODES[act], scale, zero_point,
                               torch.get_num_threads())
    return y


def quantized_gate_mul(x: torch.Tensor, gate: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor | None:
    """``quantize(dequantize(x) * gate)`` for a channels-last quint8 ``x`` (N, C, H, W) and float
    ``gate`` (N, C): a squeeze-excite's product, one pass.  None where that does not apply."""
    if _quint8_layout(x) is not torch.channels_last or library() is None:
        return None
    n, c, h, w = x.shape
    g = gate.reshape(n, c).float().contiguous()
    y = torch._empty_affine_quantized(x.shape, scale=scale, zero_point=zero_point, dtype=torch.quint8,
                                      memory_format=torch.channels_last)
    library().eff_q_gate_mul(x.data_ptr(), y.data_ptr(), g.data_ptr(), n, h * w, c, x.q_scale(), x.q_zero_point(),
                             scale, zero_point, torch.get_num_threads())
    return y


def bf16_channel_sums(x: torch.Tensor) -> torch.Tensor | None:
    """Spatial sums (fp32, (N, C)) of a channels-last bfloat16 CPU ``x`` (N, C, H, W) in one pass,
    without the float32 copy PyTorch's mean makes; None where the native library is missing."""
    if (x.dtype != torch.bfloat16 or x.device.type != "cpu" or x.ndim != 4
            or not x.is_contiguous(memory_format=torch.channels_last) or library() is None):
        return None
    n, c, h, w = x.shape
    sums = torch.empty((n, c), dtype=torch.float32)
    library().eff_bf16_channel_sums(x.data_ptr(), sums.data_ptr(), n, h * w, c, torch.get_num_threads())
    return sums


def quantized_channel_mean(x: torch.Tensor) -> torch.Tensor | None:
    """Spatial means of a channels-last quint8 ``x`` (N, C, H, W) as an (N, C, 1, 1) quint8 tensor
    with ``x``'s scale and zero point (the mean of the stored bytes, rounded half to even: what
    dequantize, mean and quantize give up to float rounding), without a float copy of ``x``.
    None where that does not apply."""
    if _quint8_layout(x) is not torch.channels_last or library() is None:
        return None
    n, c, h, w = x.shape
    sums = torch.empty((n, c), dtype=torch.int64)
    library().eff_q_channel_sums(x.data_ptr(), sums.data_ptr(), n, h * w, c, torch.get_num_threads())
    q = torch.round(sums.double() / (h * w)).clamp_(0, 255).to(torch.uint8).reshape(n, c, 1, 1)
    return torch._make_per_tensor_quantized_tensor(q, x.q_scale(), x.q_zero_point())


def supports_gate_backward(dy: torch.Tensor, x: torch.Tensor) -> bool:
    """True when :func:`gate_backward` applies: float32 CPU tensors of one 4-D shape, both
    channels-last, and the kernels are built."""
    return (dy.ndim == 4 and dy.shape == x.shape and dy.dtype == x.dtype == torch.float32
            and dy.device.type == x.device.type == "cpu" and dy.is_contiguous(memory_format=torch.channels_last)
            and x.is_contiguous(memory_format=torch.channels_last) and library() is not None)


def gate_backward(dy: torch.Tensor, x: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of ``y = x * gate`` (``gate`` one value per image and channel, (N, C) or
    (N, C, 1, 1)) in one pass: ``dx = dy * gate`` (into ``out``, which may be ``dy`` itself) and
    the (N, C) sums over pixels of ``dy * x`` (the gate's gradient), summed in float64.
    Call only where :func:`supports_gate_backward`."""
    n, c, h, w = x.shape
    if not supports_gate_backward(dy, x):
        raise ValueError(f"gate_backward needs float32 CPU channels-last dy and x of one shape, got "
                         f"{dy.dtype} {tuple(dy.shape)} and {x.dtype} {tuple(x.shape)}")
    if gate.numel() != n * c:
        raise ValueError(f"gate must hold one value per image and channel ({n} x {c}), got {tuple(gate.shape)}")
    if out is None:
        out = torch.empty_like(dy, memory_format=torch.channels_last)
    elif out.shape != dy.shape or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"out must be a channels-last tensor shaped {tuple(dy.shape)}")
    g = gate.detach().reshape(n, c).float().contiguous()
    dg = torch.empty((n, c), dtype=torch.float64)
    library().eff_gate_bwd(dy.data_ptr(), x.data_ptr(), g.data_ptr(), out.data_ptr(), dg.data_ptr(), n, h * w, c,
                           torch.get_num_threads())
    return out, dg.float()


# Winograd F(4x4, 3x3) (Lavin & Gray 2016, arXiv 1509.09308, points 0, +-1, +-2, infinity): the
# filter transform G; the data and output transforms B^T and A^T live in native.c
_WINO_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
           (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))
# tiles per transform -> GEMM -> transform round: the transformed tiles of one round stay in cache
_WINO_BYTES_PER_ROUND = 2 << 20


def winograd_available() -> bool:
    """True where :func:`winograd_conv3x3` can run (the kernels are built, x86 with AVX2 + FMA)."""
    lib = library()
    return lib is not None and hasattr(lib, "eff_wino_in") and bool(lib.eff_have_avx2())


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv weight (C_out, C_in, 3, 3) as the (36, C_in, C_out) float32 matrices
    ``G g G^T`` that :func:`winograd_conv3x3` multiplies by, computed in float64."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ValueError(f"winograd_weight needs a (C_out, C_in, 3, 3) weight, got {tuple(weight.shape)}")
    g = torch.tensor(_WINO_G, dtype=torch.float64)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.detach().double().cpu(), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).float().contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
                     act: str = "identity", tiles_per_round: int | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, stride=1, padding=padding))`` for a 3x3 weight given as
    ``u = winograd_weight(weight)``, channels-last float32 CPU, by Winograd F(4x4, 3x3): the
    36 products per tile run as batched matrix products.  Channels must be multiples of 8;
    ``act`` a key of ``DW_ACT_CODES``; ``out``: a channels-last float32 tensor of the output's
    shape to write into.  Float32 error is a few times direct convolution's
    (transforms with entries up to 8; the tests bound it).  Call only where
    :func:`winograd_available`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"winograd_conv3x3 needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    n, c, h, w = x.shape
    if u.ndim != 3 or u.shape[0] != 36 or u.shape[1] != c or c % 8 or u.shape[2] % 8:
        raise ValueError(f"u must be (36, C_in, C_out) with C_in = {c} and both multiples of 8, got "
                         f"{tuple(u.shape)}")
    if act not in DW_ACT_CODES:
        raise ValueError(f"act must be one of {sorted(DW_ACT_CODES)}, got {act!r}")
    if tiles_per_round is not None and tiles_per_round < 1:
        raise ValueError(f"tiles_per_round must be a positive number of tiles (or None: sized to the cache), "
                         f"got {tiles_per_round}")
    co = u.shape[2]
    oh, ow = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    if oh < 1 or ow < 1:
        raise ValueError(f"a 3x3 convolution of a {h}x{w} input with padding {padding} has no output")
    th, tw = (oh + 3) // 4, (ow + 3) // 4
    tiles = n * th * tw
    x = x.contiguous(memory_format=torch.channels_last)
    y = _output(out, (n, co, oh, ow))
    per_round = tiles_per_round or max(64, _WINO_BYTES_PER_ROUND // (36 * 4 * (c + co)))
    per_round = min(per_round, tiles)
    v_buf = torch.empty(36 * per_round * c, dtype=torch.float32)  # reused by every round; the last,
    m_buf = torch.empty(36 * per_round * co, dtype=torch.float32)  # shorter one views their front
    bias = _param(bias)
    lib, nt = library(), torch.get_num_threads()
    for t0 in range(0, tiles, per_round):
        t1 = min(t0 + per_round, tiles)
        vv = v_buf[:36 * (t1 - t0) * c].view(36, t1 - t0, c)
        mm = m_buf[:36 * (t1 - t0) * co].view(36, t1 - t0, co)
        lib.eff_wino_in(x.data_ptr(), vv.data_ptr(), n, h, w, c, th, tw, padding[0], padding[1], t0, t1, nt)
        torch.bmm(vv, u, out=mm)
        lib.eff_wino_out(mm.data_ptr(), _ptr(bias), y.data_ptr(), n, oh, ow, co, th, tw, t0, t1, DW_ACT_CODES[act],
                         nt)
    return y


def winograd_panels(u: torch.Tensor) -> torch.Tensor:
    """``u = winograd_weight(weight)`` (36, C_in, C_out) as the 16-column panels
    :func:`winograd_conv3x3_fused` multiplies by: (36, ceil(C_out / 16), C_in, 16), zero past C_out."""
    if u.ndim != 3 or u.shape[0] != 36:
        raise ValueError(f"winograd_panels needs winograd_weight()'s (36, C_in, C_out), got {tuple(u.shape)}")
    _, ci, co = u.shape
    p = (co + 15) // 16
    w = torch.zeros(36, p * 16, ci, dtype=torch.float32)
    w[:, :co] = u.float().transpose(1, 2)
    return w.reshape(36, p, 16, ci).transpose(2, 3).contiguous()


def _winograd_input(fn: str, x: torch.Tensor, panels: torch.Tensor, cols: str) -> tuple[int, int, int, int]:
    """(N, C, H, W) of the fused Winograd kernels' input, checked with their ``panels``."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"{fn} needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    c = x.shape[1]
    if panels.ndim != 4 or panels.shape[0] != 36 or panels.shape[2] != c or panels.shape[3] != 16 or c % 8:
        raise ValueError(f"panels must be winograd_panels() of a (36, {c}, {cols}) matrix with C_in a multiple of 8, "
                         f"got {tuple(panels.shape)}")
    return tuple(x.shape)


def winograd_conv3x3_fused(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None,
                           padding: tuple[int, int], act: str = "identity", out: torch.Tensor | None = None,
                           tiles_per_block: int | None = None) -> torch.Tensor:
    """:func:`winograd_conv3x3` with ``panels = winograd_panels(winograd_weight(weight))`` and
    ``bias`` (C_out,) float32 (zeros for none; it gives C_out): the transforms and the 36 products
    done together, ``tiles_per_block`` tiles at a time on one thread (default: 24, 12 where that
    leaves fewer than 4 blocks per thread), so the transformed tiles never leave the core's cache;
    the products run on the 1x1 GEMM's tiles.  The same
    arithmetic as :func:`winograd_conv3x3` up to the order of the sums (float32 rounding).  The
    panels (36 x C_in x C_out) are read once per block: for wide layers on small maps
    :func:`winograd_conv3x3` is faster (``effnets.optimize`` times both)."""
    n, c, h, w = _winograd_input("winograd_conv3x3_fused", x, panels, "C_out")
    if act not in DW_ACT_CODES:
        raise ValueError(f"act must be one of {sorted(DW_ACT_CODES)}, got {act!r}")
    if bias is None or bias.ndim != 1 or bias.shape[0] % 8 or not 0 <= panels.shape[1] * 16 - bias.shape[0] < 16:
        raise ValueError(f"winograd_conv3x3_fused needs the bias (C_out,), C_out a multiple of 8 that the panels "
                         f"hold, got {None if bias is None else tuple(bias.shape)} for panels {tuple(panels.shape)}")
    if tiles_per_block is not None and tiles_per_block < 1:
        raise ValueError(f"tiles_per_block must be a positive number of tiles, got {tiles_per_block}")
    co = bias.shape[0]
    oh, ow = h + 2 * padding[0] - 2, w + 2 * padding[1] - 2
    if oh < 1 or ow < 1:
        raise ValueError(f"a 3x3 convolution of a {h}x{w} input with padding {padding} has no output")
    nt = torch.get_num_threads()
    tiles = n * ((oh + 3) // 4) * ((ow + 3) // 4)
    block = tiles_per_block or (24 if tiles >= 24 * 4 * nt else 12)
    x = x.contiguous(memory_format=torch.channels_last)
    y = _output(out, (n, co, oh, ow))
    if library().eff_wino_fused(x.data_ptr(), panels.data_ptr(), _param(bias).data_ptr(), y.data_ptr(), n, h, w, c,
                                co, oh, ow, padding[0], padding[1], DW_ACT_CODES[act], block, nt):
        raise MemoryError(f"winograd_conv3x3_fused: no memory for {nt} blocks of {block} tiles")
    return y


def winograd_pointwise_fused(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor, act: str,
                             pw_panels: torch.Tensor, pw_bias: torch.Tensor, out: torch.Tensor, pw_act: str = "identity",
                             residual: torch.Tensor | None = None, tiles_per_block: int | None = None) -> torch.Tensor:
    """``pointwise_conv(winograd_conv3x3_fused(x, panels, bias, padding=(1, 1), act), pw_panels,
    pw_bias, C_out2, pw_act, residual)`` in one pass, into ``out`` (N, C_out2, H, W) channels-last:
    a Fused-MBConv block's 3x3 expand conv and 1x1 project conv (+ its shortcut), the expanded
    tensor never written out (each run of 6 tiles goes from the output transform to the 1x1 GEMM
    through a per-thread buffer).  Equal bit for bit to the two calls.  ``panels`` from
    :func:`winograd_panels` with ``bias`` (C_mid,); ``pw_panels`` from :func:`pointwise_weight`
    of the (C_out2, C_mid, 1, 1) weight with ``pw_bias`` (C_out2,); ``residual`` None or
    channels-last of ``out``'s shape.  Padding 1 (the output has the input's size)."""
    n, c, h, w = _winograd_input("winograd_pointwise_fused", x, panels, "C_mid")
    if bias.ndim != 1 or bias.shape[0] % 8 or not 0 <= panels.shape[1] * 16 - bias.shape[0] < 16:
        raise ValueError(f"bias must be (C_mid,), C_mid a multiple of 8 that the panels hold, got {tuple(bias.shape)} "
                         f"for panels {tuple(panels.shape)}")
    cm, co2 = bias.shape[0], out.shape[1]
    if pw_panels.ndim != 3 or pw_panels.shape[1] != cm or pw_panels.shape[2] != 16 \
            or not 0 <= pw_panels.shape[0] * 16 - co2 < 16 or pw_bias.shape != (co2,):
        raise ValueError(f"pw_panels must be pointwise_weight() of a ({co2}, {cm}, 1, 1) weight with pw_bias ({co2},), "
                         f"got {tuple(pw_panels.shape)} and {tuple(pw_bias.shape)}")
    if act not in DW_ACT_CODES or pw_act not in DW_ACT_CODES:
        raise ValueError(f"act and pw_act must be among {sorted(DW_ACT_CODES)}, got {act!r}, {pw_act!r}")
    if tuple(out.shape) != (n, co2, h, w) or out.dtype != torch.float32 \
            or not out.is_contiguous(memory_format=torch.channels_last):
        raise ValueError(f"out must be a channels-last float32 ({n}, {co2}, {h}, {w}) tensor, got {out.dtype} "
                         f"{tuple(out.shape)}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != torch.float32
                                 or not residual.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"residual must be channels-last float32 of the output's shape {tuple(out.shape)}, got "
                         f"{residual.dtype} {tuple(residual.shape)}")
    nt = torch.get_num_threads()
    tiles = n * ((h + 3) // 4) * ((w + 3) // 4)
    block = tiles_per_block or (24 if tiles >= 24 * 4 * nt else 12)
    x = x.contiguous(memory_format=torch.channels_last)
    if library().eff_wino_pw_fused(x.data_ptr(), panels.data_ptr(), _param(bias).data_ptr(), n, h, w, c, cm, h, w,
                                   1, 1, DW_ACT_CODES[act], pw_panels.data_ptr(), _param(pw_bias).data_ptr(),
                                   _ptr(residual), out.data_ptr(), co2, DW_ACT_CODES[pw_act], block, nt):
        raise MemoryError(f"winograd_pointwise_fused: no memory for {nt} blocks of {block} tiles")
    return out


def pointwise_available() -> bool:
    """True where :func:`pointwise_conv` runs vectorised (the kernels are built, x86 with AVX2 + FMA)."""
    lib = library()
    return lib is not None and bool(lib.eff_have_avx2())


def set_avx512(on: bool) -> bool:
    """Lets the kernels with 16-lane code (the 1x1-conv GEMM's tile, the depthwise interior) use it
    (the default where the CPU has AVX-512F) or run their AVX2 code; returns whether the AVX-512
    code is now in use (False on CPUs without it).  For tests and A/B benchmarks; process-wide."""
    lib = library()
    return lib is not None and bool(lib.eff_set_avx512(int(bool(on))))


def set_depthwise_blocks(on: bool) -> bool:
    """Lets the inference depthwise kernel run its 8-pixel register-blocked AVX-512 code for 3x3
    and 5x5 kernels (the default) or only its 4-pixel code; returns the previous setting.  The
    two give the same bits.  For tests and A/B benchmarks; process-wide."""
    lib = library()
    return lib is not None and bool(lib.eff_dw_set_blocks(int(bool(on))))


def depthwise_last_blocked() -> bool:
    """Whether the last inference depthwise call ran the 8-pixel blocks (tests)."""
    lib = library()
    return lib is not None and lib.eff_dw_last_blocked() == 1


def pointwise_weight(weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 conv weight (C_out, C_in, 1, 1) as the panels :func:`pointwise_conv` reads:
    (ceil(C_out / 16), C_in, 16) float32, output channels 16 at a time, zero past C_out."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"pointwise_weight needs a (C_out, C_in, 1, 1) weight, got {tuple(weight.shape)}")
    co, ci = weight.shape[:2]
    panels = (co + 15) // 16
    w = torch.zeros(panels * 16, ci, dtype=torch.float32)
    w[:co] = weight.detach().float().reshape(co, ci)
    return w.reshape(panels, 16, ci).transpose(1, 2).contiguous()


def _epilogue_args(fn: str, act: str, residual: torch.Tensor | None, gate: torch.Tensor | None, shape: tuple,
                   c: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A 1x1-conv kernel's activation name, optional residual (the output's ``shape``, returned
    channels-last float32) and gate ((N, C_in) or (N, C_in, 1, 1), returned contiguous float32
    (N, C_in)), checked."""
    if act not in DW_ACT_CODES:
        raise ValueError(f"act must be one of {sorted(DW_ACT_CODES)}, got {act!r}")
    n = shape[0]
    if residual is not None:
        if tuple(residual.shape) != shape:
            raise ValueError(f"{fn}: residual {tuple(residual.shape)} does not match the output {shape}")
        residual = residual.float().contiguous(memory_format=torch.channels_last)
    if gate is not None:
        if tuple(gate.shape) not in ((n, c), (n, c, 1, 1)):
            raise ValueError(f"{fn}: gate {tuple(gate.shape)} must be (N, C_in) = {(n, c)}")
        gate = _param(gate.reshape(n, c))
    return residual, gate


def pointwise_conv(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, out_channels: int,
                   act: str = "identity", residual: torch.Tensor | None = None,
                   out: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(x * gate, weight, bias)) (+ residual)`` for a 1x1 stride-1 conv, channels-last
    float32 CPU, with ``panels = pointwise_weight(weight)``; written into ``out`` when given
    (channels-last, the output's shape), so a caller can reuse one buffer across calls.
    ``gate`` (N, C_in), one factor per image and input channel (a squeeze-excite's gates, see
    :func:`se_gates`), or None.  ``act`` is a key of ``DW_ACT_CODES``.  Call only where
    :func:`library` is not None."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"pointwise_conv needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} "
                         f"on {x.device}")
    n, c, h, w = x.shape
    if panels.ndim != 3 or panels.shape[1] != c or panels.shape[2] != 16 or panels.shape[0] * 16 < out_channels \
            or (panels.shape[0] - 1) * 16 >= out_channels:
        raise ValueError(f"panels must be pointwise_weight() of a ({out_channels}, {c}, 1, 1) weight, got "
                         f"{tuple(panels.shape)}")
    shape = (n, out_channels, h, w)
    residual, gate = _epilogue_args("pointwise_conv", act, residual, gate, shape, c)
    out = _output(out, shape)
    b = torch.zeros(out_channels, dtype=torch.float32) if bias is None else _param(bias)
    return pointwise_into(x.contiguous(memory_format=torch.channels_last), panels.float().contiguous(), b, out,
                          DW_ACT_CODES[act], residual, gate)


def pointwise_into(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor, out: torch.Tensor,
                   act_code: int, residual: torch.Tensor | None = None,
                   gate: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pointwise_conv` without its checks (~10 us per call at batch 1), for a caller that
    made them once: ``x`` channels-last float32 CPU with ``panels.shape[1]`` channels, ``bias``
    contiguous float32 with ``out.shape[1]`` values, ``out`` (and ``residual``) channels-last
    float32 of the output's shape, ``gate`` None or contiguous float32 (N, C_in), ``act_code``
    from ``DW_ACT_CODES``.  ``effnets.optimize`` calls it."""
    n, c, h, w = x.shape
    library().eff_pw_fwd(x.data_ptr(), panels.data_ptr(), bias.data_ptr(), _ptr(residual), _ptr(gate), h * w,
                         out.data_ptr(), n * h * w, c, out.shape[1], act_code, torch.get_num_threads())
    return out


def conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """A dense conv weight (C_out, C_in, KH, KW) as the panels :func:`conv_into` reads: the
    :func:`pointwise_weight` panels of the (C_out, KH * KW * C_in) matrix, rows in (kh, kw, c)
    order (the order of a channels-last patch)."""
    if weight.ndim != 4:
        raise ValueError(f"conv_weight needs a (C_out, C_in, KH, KW) weight, got {tuple(weight.shape)}")
    co = weight.shape[0]
    return pointwise_weight(weight.detach().float().permute(0, 2, 3, 1).reshape(co, -1, 1, 1))


def conv_output_shape(x_shape: tuple, out_channels: int, kernel: tuple[int, int], stride: int,
                      padding: tuple[int, int]) -> tuple[int, int, int, int]:
    """(N, C_out, OH, OW) of a conv of an (N, C, H, W) input (no dilation); sizes below 1 where
    the kernel does not fit."""
    n, _, h, w = x_shape
    return (n, out_channels, (h + 2 * padding[0] - kernel[0]) // stride + 1, (w + 2 * padding[1] - kernel[1]) // stride + 1)


def conv_forward(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, out_channels: int,
                 kernel: tuple[int, int], stride: int = 1, padding: tuple[int, int] = (0, 0), act: str = "identity",
                 residual: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(x, weight, bias, stride, padding)) (+ residual)`` for a dense (ungrouped,
    undilated) conv of any kernel size, channels-last float32 CPU, with ``panels =
    conv_weight(weight)``: each thread gathers a block of output pixels' patches into a buffer in
    its cache and runs the 1x1 GEMM on them (``native.c``, ``eff_conv_fwd``); written into
    ``out`` when given.  ``act`` is a key of ``DW_ACT_CODES``.  Call only where :func:`library`
    is not None."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"conv_forward needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    kh, kw = kernel
    k = x.shape[1] * kh * kw
    if panels.ndim != 3 or panels.shape[1] != k or panels.shape[2] != 16 or panels.shape[0] != (out_channels + 15) // 16:
        raise ValueError(f"panels must be conv_weight() of a ({out_channels}, {x.shape[1]}, {kh}, {kw}) weight, "
                         f"got {tuple(panels.shape)}")
    if stride < 1 or min(padding) < 0 or min(kernel) < 1:
        raise ValueError(f"conv_forward: stride {stride}, padding {padding}, kernel {kernel} out of range")
    shape = conv_output_shape(tuple(x.shape), out_channels, kernel, stride, padding)
    if shape[2] < 1 or shape[3] < 1:
        raise ValueError(f"conv_forward: a {kh}x{kw} kernel with padding {padding} does not fit the "
                         f"{x.shape[2]}x{x.shape[3]} input")
    residual, _ = _epilogue_args("conv_forward", act, residual, None, shape, x.shape[1])
    out = _output(out, shape)
    b = torch.zeros(out_channels, dtype=torch.float32) if bias is None else _param(bias)
    return conv_into(x.contiguous(memory_format=torch.channels_last), panels.float().contiguous(), b, out,
                     kernel, stride, padding, DW_ACT_CODES[act], residual)


def conv_into(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, kernel: tuple[int, int],
              stride: int, padding: tuple[int, int], act_code: int,
              residual: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`conv_forward` without its checks, for a caller that made them once (``x``
    channels-last float32, ``out`` channels-last of the output's shape, ``bias`` contiguous
    float32); ``effnets.optimize`` calls it."""
    n, c, h, w = x.shape
    rc = library().eff_conv_fwd(x.data_ptr(), panels.data_ptr(), bias.data_ptr(), _ptr(residual), out.data_ptr(),
                                n, h, w, c, out.shape[2], out.shape[3], out.shape[1], kernel[0], kernel[1], stride,
                                padding[0], padding[1], act_code, torch.get_num_threads())
    if rc != 0:
        raise MemoryError("conv_forward: no memory for the patch buffers")
    return out


Q8_MIN_SPAN = 1e-30  # native.c's: a pixel with a smaller range is stored as its minimum
INT8_LEVELS = {3: "amx", 2: "avx512-vnni", 1: "avx2", 0: "plain C"}  # pointwise_q8's code, best first
INT8_BEST = 3


def q8_quads(in_channels: int) -> int:
    """Four-channel groups one int8 weight panel spans in memory: whole AMX tiles of 16 (native.c's
    q8_kp); :func:`pointwise_weight_q8`'s panels are a view with that stride."""
    return (in_channels + 63) // 64 * 16


def int8_fast() -> bool:
    """True where :func:`pointwise_q8` runs its AMX or VNNI code (AVX512-VNNI + BW: Intel since
    Cascade Lake, AMD since Zen 4; neither :func:`set_avx512` nor :func:`set_int8_isa` turned it
    off); elsewhere it runs AVX2 or plain C code (the same int32 sums, slower: :func:`int8_isa`)."""
    return int8_isa() >= 2


def int8_isa() -> int:
    """The code :func:`pointwise_q8` runs now: 3 AMX tiles (Intel Xeon since Sapphire Rapids, where
    Linux lends the tile state), 2 AVX512-VNNI (4x fp32's multiply-adds per instruction), 1 AVX2 (16-bit multiply-adds: about the fp32 GEMM's speed), 0 plain C (far
    slower than fp32), -1 no compiled kernels (the PyTorch path)."""
    lib = library()
    return -1 if lib is None else int(lib.eff_q8_isa())


def int8_last_code() -> int:
    """The code the last :func:`pointwise_q8` call ran (3 AMX, 2 VNNI, 1 AVX2, 0 plain C; -1 none
    yet): AMX takes only products of at least 256 rows, 48 input and 32 output channels and 8M
    multiply-adds, where it timed faster."""
    lib = library()
    return -1 if lib is None else int(lib.eff_q8_last_code())


def set_int8_isa(level: int) -> int:
    """Caps the code :func:`pointwise_q8` may run: 3 the best the CPU has (AMX), 2 at most
    AVX512-VNNI, 1 at most AVX2 (16-bit multiply-adds), 0 plain C; all give the same int32 sums.
    Returns the previous cap.  For tests and A/B benchmarks; process-wide."""
    if level not in INT8_LEVELS:
        raise ValueError(f"set_int8_isa: level must be one of {sorted(INT8_LEVELS)}, got {level!r}")
    lib = library()
    return INT8_BEST if lib is None else int(lib.eff_q8_set_isa(int(level)))


def pointwise_weight_q8(weight: torch.Tensor, bias: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 1x1 conv weight (C_out, C_in, 1, 1) in int8 for :func:`pointwise_q8`: one symmetric scale
    per output channel (max |w| / 127, values -127..127).  Returns ``(panels, cols, dequantized)``:
    panels (ceil(C_out / 16), ceil(C_in / 4), 16, 4) int8 (four input channels of one output
    channel adjacent, zero padding; a view whose panels lie :func:`q8_quads` quads apart, whole
    AMX tiles, zeros between), cols (3, P * 16) float32 = (scale, scale * sum of the int8
    row, bias), and the dequantized weight (int8 x scale, float32, the weight's shape): what the
    plain PyTorch path convolves with, so both paths use the same weights."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"pointwise_weight_q8 needs a (C_out, C_in, 1, 1) weight, got {tuple(weight.shape)}")
    co, ci = weight.shape[:2]
    w = weight.detach().float().reshape(co, ci)
    scale = w.abs().amax(1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127)
    p, kp = (co + 15) // 16, q8_quads(ci)
    full = torch.zeros(p * 16, kp * 4, dtype=torch.int8)
    full[:co, :ci] = q.to(torch.int8)
    panels = full.reshape(p, 16, kp, 4).permute(0, 2, 1, 3).contiguous()[:, :(ci + 3) // 4]
    cols = torch.zeros(3, p * 16, dtype=torch.float32)
    cols[0, :co] = scale
    cols[1, :co] = scale * q.sum(1)
    if bias is not None:
        cols[2, :co] = bias.detach().float()
    return panels, cols, (q * scale[:, None]).reshape(co, ci, 1, 1)


def quantize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, H, W) with each pixel's C values rounded to 256 levels over their own range
    (what :func:`pointwise_q8` does to its input, in PyTorch ops: the plain path and exports)."""
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    span = hi - lo
    # a true division, as the kernel does (``255.0 / span`` runs as span.reciprocal() * 255);
    # a pixel whose range is below Q8_MIN_SPAN is its minimum (255 / span would overflow), a NaN
    # or a range beyond float makes the pixel NaN (span NaN / inf: its products are NaN below)
    wide = span > Q8_MIN_SPAN
    inv = torch.where(wide, torch.full_like(span, 255.0) / span, torch.zeros_like(span))
    q = torch.round((x - lo) * inv).clamp_(0, 255)
    return q * torch.where(wide, span / 255.0, torch.zeros_like(span)) + lo


def pointwise_q8(x: torch.Tensor, panels: torch.Tensor, cols: torch.Tensor, out_channels: int,
                 act: str = "identity", residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                 gate: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(q(x * gate), w) + bias) (+ residual)`` for a 1x1 stride-1 conv with int8
    weights (``panels, cols = pointwise_weight_q8(weight, bias)[:2]``) where ``q`` rounds each
    pixel's channels to 256 levels over their own range (:func:`quantize_rows`) and the products
    are summed in int32: channels-last float32 CPU in and out, like :func:`pointwise_conv`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"pointwise_q8 needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    n, c, h, w = x.shape
    p = (out_channels + 15) // 16
    if (panels.dtype != torch.int8 or tuple(panels.shape) != (p, (c + 3) // 4, 16, 4)
            or cols.dtype != torch.float32 or tuple(cols.shape) != (3, p * 16)):
        raise ValueError(f"panels / cols must be pointwise_weight_q8() of a ({out_channels}, {c}, 1, 1) weight, got "
                         f"{panels.dtype} {tuple(panels.shape)} / {cols.dtype} {tuple(cols.shape)}")
    shape = (n, out_channels, h, w)
    residual, gate = _epilogue_args("pointwise_q8", act, residual, gate, shape, c)
    if panels.stride()[1:] != (64, 4, 1) or panels.stride(0) < 64 * panels.shape[1]:
        panels = panels.contiguous()  # a copy: the panels back to back (the AMX code then not taken)
    return pointwise_q8_into(x.contiguous(memory_format=torch.channels_last), panels, cols.contiguous(),
                             _output(out, shape), DW_ACT_CODES[act], residual, gate)


def pointwise_q8_into(x: torch.Tensor, panels: torch.Tensor, cols: torch.Tensor, out: torch.Tensor, act_code: int,
                      residual: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pointwise_q8` without its checks, for a caller that made them once (``effnets.optimize``)."""
    n, c, h, w = x.shape
    if library().eff_pw_q8_fwd(x.data_ptr(), panels.data_ptr(), panels.stride(0) // 64, cols.data_ptr(), _ptr(residual), _ptr(gate), h * w,
                               out.data_ptr(), n * h * w, c, out.shape[1], act_code, torch.get_num_threads()):
        raise MemoryError("pointwise_q8: no memory for the row buffers")
    return out


def bf16_fast() -> bool:
    """True where :func:`pointwise_bf16` runs (an x86 CPU with AVX512-BF16: Intel since Cooper
    Lake, AMD since Zen 4; :func:`set_avx512` not turned off)."""
    lib = library()
    return lib is not None and bool(lib.eff_bf16_fast())


def pointwise_weight_bf16(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A 1x1 conv weight (C_out, C_in, 1, 1) in bf16 for :func:`pointwise_bf16`: returns
    ``(panels, rounded)``, panels (ceil(C_out / 16), ceil(C_in / 2), 16, 2) bf16 (two input
    channels of one output channel adjacent, zero padding) and the weight rounded to bf16 (nearest
    even) as float32, the weight's shape: what the plain PyTorch path convolves with."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (1, 1):
        raise ValueError(f"pointwise_weight_bf16 needs a (C_out, C_in, 1, 1) weight, got {tuple(weight.shape)}")
    co, ci = weight.shape[:2]
    w = weight.detach().float().reshape(co, ci).to(torch.bfloat16)
    p, k2 = (co + 15) // 16, (ci + 1) // 2
    full = torch.zeros(p * 16, k2 * 2, dtype=torch.bfloat16)
    full[:co, :ci] = w
    panels = full.reshape(p, 16, k2, 2).permute(0, 2, 1, 3).contiguous()
    return panels, w.float().reshape(co, ci, 1, 1)


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """``x`` rounded to bf16 (nearest even) and back to float32: what :func:`pointwise_bf16` does
    to its input, in PyTorch ops (the plain path and exports)."""
    return x.to(torch.bfloat16).to(x.dtype)


def pointwise_bf16(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor | None, out_channels: int,
                   act: str = "identity", residual: torch.Tensor | None = None, out: torch.Tensor | None = None,
                   gate: torch.Tensor | None = None) -> torch.Tensor:
    """``act(conv2d(bf16(x * gate), w) + bias) (+ residual)`` for a 1x1 stride-1 conv with bf16
    weights (``panels = pointwise_weight_bf16(weight)[0]``): the input rounded to bf16 on the fly,
    the products summed in fp32 (AVX512-BF16 ``vdpbf16ps``); channels-last float32 CPU in and out,
    like :func:`pointwise_conv`.  Needs :func:`bf16_fast`."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.ndim != 4:
        raise ValueError(f"pointwise_bf16 needs a 4-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    n, c, h, w = x.shape
    p = (out_channels + 15) // 16
    if panels.dtype != torch.bfloat16 or tuple(panels.shape) != (p, (c + 1) // 2, 16, 2):
        raise ValueError(f"panels must be pointwise_weight_bf16() of a ({out_channels}, {c}, 1, 1) weight, got "
                         f"{panels.dtype} {tuple(panels.shape)}")
    if not bf16_fast():
        raise RuntimeError("pointwise_bf16 needs a CPU with AVX512-BF16 (kernels.bf16_fast() is False): "
                           "use the float32 pointwise_conv")
    shape = (n, out_channels, h, w)
    residual, gate = _epilogue_args("pointwise_bf16", act, residual, gate, shape, c)
    b = torch.zeros(out_channels) if bias is None else bias.detach().float().contiguous()
    return pointwise_bf16_into(x.contiguous(memory_format=torch.channels_last), panels.contiguous(), b,
                               _output(out, shape), DW_ACT_CODES[act], residual, gate)


def pointwise_bf16_into(x: torch.Tensor, panels: torch.Tensor, bias: torch.Tensor, out: torch.Tensor, act_code: int,
                        residual: torch.Tensor | None = None, gate: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`pointwise_bf16` without its checks, for a caller that made them once (``effnets.optimize``)."""
    n, c, h, w = x.shape
    r = library().eff_pw_bf16_fwd(x.data_ptr(), panels.data_ptr(), panels.shape[1], bias.data_ptr(), _ptr(residual),
                                  _ptr(gate), h * w, out.data_ptr(), n * h * w, c, out.shape[1], act_code,
                                  torch.get_num_threads())
    if r == -2:
        raise RuntimeError("pointwise_bf16: this CPU has no AVX512-BF16 (kernels.bf16_fast() is False)")
    if r != 0:
        raise MemoryError("pointwise_bf16: no memory for the row buffers")
    return out


def fma_peak(seconds: float = 0.3, threads: int | None = None) -> float | None:
    """The CPU's fp32 multiply-add rate in GFLOP/s on ``threads`` threads (default: PyTorch's
    count): each thread runs 12 independent FMA chains on the widest vectors effnets' kernels
    use (AVX-512, AVX2 or scalar), the best of three runs of about ``seconds`` / 3 each.  The
    arithmetic limit a model's GFLOP/s can be held against (a large matmul reaches 80-90% of it);
    None without the native library."""
    lib = library()
    if lib is None:
        return None
    nt = threads or torch.get_num_threads()
    lib.eff_fma_peak(1 << 14, nt)  # threads started
    t = time.perf_counter()
    lib.eff_fma_peak(1 << 18, nt)  # calibrates the rounds to the time asked for
    rounds = max(1 << 16, int((1 << 18) * seconds / 3 / max(time.perf_counter() - t, 1e-6)))
    return max(lib.eff_fma_peak(rounds, nt) for _ in range(3))


def depthwise_into(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor,
                   sums: torch.Tensor | None, stride: int, padding: tuple[int, int], act_code: int) -> torch.Tensor:
    """:func:`depthwise_forward` without its checks, for a caller that made them once: ``x``
    channels-last float32 CPU, ``taps`` contiguous float32 (K*K, C), ``bias`` contiguous float32
    (C) or None, ``out`` channels-last float32 of the output's shape, ``sums`` a float32 (N, C) tensor or
    None, ``act_code`` from ``DW_ACT_CODES``.  ``effnets.optimize`` calls it."""
    n, c, h, w = x.shape
    k = int(round(taps.shape[0] ** 0.5))
    library().eff_dw_fwd(x.data_ptr(), taps.data_ptr(), _ptr(bias), out.data_ptr(), _ptr(sums), n, h, w, c,
                         out.shape[2], out.shape[3], k, stride, padding[0], padding[1], act_code,
                         torch.get_num_threads())
    return out


def expand_depthwise_into(x: torch.Tensor, panels: torch.Tensor, pw_bias: torch.Tensor, pw_act_code: int,
                          taps: torch.Tensor, dw_bias: torch.Tensor, out: torch.Tensor, sums: torch.Tensor | None,
                          stride: int, padding: tuple[int, int], dw_act_code: int) -> torch.Tensor:
    """``depthwise(act(pointwise(x)))`` in one pass, the expanded tensor never written out (an
    inverted-residual block's expand and depthwise convs; ``effnets.optimize`` calls it): equal
    bit for bit to :func:`pointwise_into` (or :func:`pointwise_q8_into`) followed by
    :func:`depthwise_into`.  ``x`` channels-last float32 CPU (N, C_in, H, W); ``panels`` from
    :func:`pointwise_weight` with ``pw_bias`` (C_mid), int8 panels and their cols from
    :func:`pointwise_weight_q8` (the int8 GEMM), or bf16 panels from :func:`pointwise_weight_bf16`
    with ``pw_bias`` (the bf16 GEMM, equal to :func:`pointwise_bf16_into`); ``taps`` (K*K, C_mid) from
    :func:`depthwise_taps` with ``dw_bias``; ``out`` channels-last float32 of the depthwise
    output's shape; ``sums`` a float32 (N, C_mid) tensor for the output's channel sums, or None.
    Checks are the caller's, as for :func:`depthwise_into`."""
    n, ci, h, w = x.shape
    cm = out.shape[1]
    kind = {torch.int8: 1, torch.bfloat16: 2}.get(panels.dtype, 0)
    if panels.shape[0] * 16 < cm or panels.shape[1] * (1, 4, 2)[kind] < ci:
        raise ValueError(f"panels {tuple(panels.shape)} do not fit {ci} -> {cm} channels")
    k = int(round(taps.shape[0] ** 0.5))
    ps = panels.stride(0) // 64 if kind == 1 else panels.shape[1] if kind == 2 else 0
    r = library().eff_pw_dw_fwd(x.data_ptr(), panels.data_ptr(), pw_bias.data_ptr(), ps, kind, pw_act_code,
                                taps.data_ptr(), dw_bias.data_ptr(),
                                out.data_ptr(), _ptr(sums), n, h, w, ci, cm, out.shape[2], out.shape[3], k, stride,
                                padding[0], padding[1], dw_act_code, torch.get_num_threads())
    if r == -2:
        raise ValueError(f"expand_depthwise_into: kernels up to 11x11, got {k}x{k}")
    if r == -3:
        raise RuntimeError("expand_depthwise_into: bf16 panels need a CPU with AVX512-BF16 (kernels.bf16_fast())")
    if r != 0:
        raise MemoryError("expand_depthwise_into: could not allocate its row buffers")
    return out


def depthwise_taps(weight: torch.Tensor) -> torch.Tensor:
    """A depthwise weight (C, 1, K, K) as the (K*K, C) float32 tap table the kernels read."""
    c, _, kh, kw = weight.shape
    return weight.detach().float().reshape(c, kh * kw).t().contiguous()


__all__ = ["library", "supports", "bn_act_forward", "bn_act_backward", "silu_", "act_out", "gelu_backward",
           "why_unavailable", "ACT_CODES",
           "supports_depthwise", "depthwise_backward", "depthwise_forward", "depthwise_taps", "DW_ACT_CODES",
           "se_gate_", "SE_ACT_CODES", "supports_gate_backward", "gate_backward", "winograd_available",
           "winograd_weight", "winograd_conv3x3", "winograd_panels", "winograd_conv3x3_fused", "winograd_pointwise_fused",
           "pointwise_available",
           "pointwise_weight", "pointwise_conv", "pointwise_into", "depthwise_into", "expand_depthwise_into", "se_gates", "se_gates_into",
           "quantized_lut", "quantized_gate_mul", "quantize_act", "quantized_channel_mean", "bf16_channel_sums", "int8_fast", "int8_isa",
           "set_int8_isa", "set_depthwise_blocks", "depthwise_last_blocked", "int8_last_code", "INT8_LEVELS", "INT8_BEST",
           "q8_quads", "pointwise_weight_q8", "quantize_rows", "pointwise_q8", "pointwise_q8_into", "Q8_MIN_SPAN",
           "bf16_fast", "pointwise_weight_bf16", "round_bf16", "pointwise_bf16", "pointwise_bf16_into", "fma_peak"]
