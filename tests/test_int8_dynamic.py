"""The int8 1x1 conv with per-pixel dynamic activation quantization (``kernels.pointwise_q8``,
``kernels.quantize_rows``, ``kernels.pointwise_weight_q8``) and ``optimize.quantize_dynamic``,
held to independent oracles: a float64 evaluation of the definition (per-pixel range, 255 steps,
round half to even), the unquantized conv with a derived quantization error bound, the plain
PyTorch path (tracing, ONNX) and the fp32 ``optimize()`` model.

Tolerances (measured on an AVX512-VNNI CPU, 2 threads, before they were set):

* float rounding of the kernel against ``act(conv2d(quantize_rows(x * gate), w_deq) + b) + res``
  in float64: at most 0.63 eps * M, where M = sum_k (|xq_k| + |min_r|) |w_k| + |b| (+ |res|) is
  the size of the terms the fp32 epilogue adds (``acc * s * sw + min * sw * sum(q) + b``); the
  bound used is 8 eps * M (a handful of float32 roundings, each <= eps / 2 of a term <= M, times
  the activation's Lipschitz constant <= 1.5).  Against the unquantized conv the error reaches
  0.51 of the derived bound (``_unquantized_bound``; 1.5% of the output range).  VNNI against
  plain C: at most 0.93 eps * M (the int32 sums are exact and equal; only the epilogue's fma /
  act code differs); bound 4 eps * M.
* logits of ``quantize_dynamic`` against the fp32 ``optimize()`` model, batch 16 at 64x64 with
  randomized BN, relative (Frobenius) error over 6 seeds: B0 (width 0.5, depth 0.5, 20 int8
  layers) 0.0043-0.0122, mobilenet_v3_small (23 layers) 0.0156-0.0255; top-1 15-16 of 16.
  Bound 5e-2: a per-pixel 8-bit grid over ~5 sigma of a row adds rms noise 5 / 255 / sqrt(12) =
  0.57% of the row's scale per layer, int8 weights over ~3 sigma another 0.7%, so ~0.9% per
  layer and sqrt(20..23) x that = 4-4.3% if nothing attenuated it.
* the eager model (native kernel) against the same model in plain mode (traced / ONNX): the
  arithmetic of one layer agrees to float rounding (7e-7 relative), but the rounding is a step
  function, so a one-ulp difference upstream (another depthwise / squeeze-excite kernel, the
  gate from the depthwise kernel's channel sums) moves a value across a rounding boundary now
  and then, and that cascades: whole-model differences 0-0.3% (B0) and 0-2.7% (mobilenet)
  max-relative, as large as the int8 error itself.  Hence the layer-by-layer checks at float
  tolerance, and the model-level ones at the quantization bound.  The exporters' own check
  compares the export with the plain path (``optimize._plain_mode`` inside their reference run),
  which computes what the trace holds, so they verify at their default 1e-4.
"""
import copy
import functools
import io
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

import effnets
from conftest import randomize_bn, record_calls
from effnets import kernels as K
from effnets.optimize import FastLinear, FusedConvAct, quantize_dynamic

O = sys.modules["effnets.optimize"]
EPS = torch.finfo(torch.float32).eps

native = pytest.mark.skipif(K.library() is None, reason=f"native kernels unavailable: {K.why_unavailable}")

# activation -> (float64 reference, Lipschitz constant: silu' <= 1.0998, hardswish' <= 1.5)
ACTS = {"identity": (lambda t: t, 1.0), "silu": (F.silu, 1.1), "relu": (F.relu, 1.0),
        "hardswish": (F.hardswish, 1.5), "relu6": (F.relu6, 1.0), "gelu": (F.gelu, 1.13)}  # max GELU' = 1.129

# (N, C_in, H, W, C_out): C_in 1 (every row constant), not a multiple of 4 (5, 13) or of 16;
# C_out 1, 7, 17, 33 (partial last panel, one and two-panel tiles), 40 (3 panels, work split
# over threads); rows 15, 21, 30, 40, 72, 6 and 1: mostly not multiples of the 12-row tile
SHAPES = [(1, 5, 3, 5, 1), (2, 13, 5, 3, 7), (3, 36, 7, 1, 17), (2, 64, 4, 5, 33), (2, 130, 6, 6, 40),
          (1, 1, 2, 3, 3), (1, 3, 1, 1, 16)]


LEVELS = {"amx": 3, "vnni": 2, "avx2": 1, "plain_c": 0}


def _use(level: str) -> None:
    """Run the int8 kernel's code of that level (``set_int8_isa``), or skip where the CPU lacks it."""
    K.set_int8_isa(LEVELS[level])
    if K.int8_isa() != LEVELS[level]:
        K.set_int8_isa(K.INT8_BEST)
        pytest.skip(f"this CPU cannot run the int8 kernel's {level} code")


@pytest.fixture(params=list(LEVELS))
def isa(request):
    """The AVX512-VNNI code, the AVX2 code and the plain C, each where the CPU has it."""
    _use(request.param)
    yield request.param
    K.set_int8_isa(K.INT8_BEST)


@pytest.fixture(scope="module", autouse=True)
def _effnets_kernels_chosen():
    """optimize() times its kernels against oneDNN on each new input shape: here ours (and the
    squeeze-excite gate folded into the int8 projection) always win, so no timing runs and the
    paths taken are always the same."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(O, "_faster", lambda a, b: False)
        yield


def _case(n, ci, h, w, co, seed=0):
    """Inputs whose channels differ ~10x in scale and offset (as EfficientNet's do), weights,
    bias, per-image gates in [0, 2) and a residual."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=g) * (0.2 + 3 * torch.rand(1, ci, 1, 1, generator=g)) \
        + torch.randn(1, ci, 1, 1, generator=g)
    weight = torch.randn(co, ci, 1, 1, generator=g) * (0.1 + torch.rand(co, 1, 1, 1, generator=g))
    bias = torch.randn(co, generator=g)
    gate = torch.rand(n, ci, generator=g) * 2
    res = torch.randn(n, co, h, w, generator=g)
    return x, weight, bias, gate, res


def _gated(x, gate):
    return x if gate is None else x * gate.reshape(gate.shape[0], gate.shape[1], 1, 1)


def _oracle(x, deq, bias, act, gate=None, residual=None):
    """``act(conv2d(quantize_rows(x * gate), w_deq, b)) + residual`` in float64, and M, the size
    of the terms the kernel's fp32 epilogue adds (the float tolerance is a multiple of it)."""
    xi = _gated(x, gate)
    xq = K.quantize_rows(xi).double()
    y = ACTS[act][0](F.conv2d(xq, deq.double(), bias.double()))
    lo = xi.amin(1, keepdim=True).double().abs()
    mag = F.conv2d(xq.abs() + lo, deq.double().abs(), bias.double().abs())
    if residual is not None:
        y, mag = y + residual.double(), mag + residual.double().abs()
    return y, mag


def _unquantized_bound(x, weight, bias, act, gate=None, residual=None):
    """``act(conv2d(x * gate, w, b)) + residual`` in float64 and a bound on how far the int8 conv
    may be from it.  With xq = x + dx, |dx| <= s_x / 2 (s_x = the pixel's range / 255) and
    wq = w + dw, |dw| <= s_w / 2 (s_w = max |w| of the output channel / 127):
    |sum wq xq - sum w x| = |sum w dx + dw x + dw dx| <= s_x / 2 sum|w| + s_w / 2 sum|x| + K s_x s_w / 4,
    times the activation's Lipschitz constant."""
    xi = _gated(x, gate).double()
    w = weight.double()
    y = ACTS[act][0](F.conv2d(xi, w, bias.double()))
    sx = (xi.amax(1, keepdim=True) - xi.amin(1, keepdim=True)) / 255
    sw = (w.abs().amax((1, 2, 3)) / 127).reshape(1, -1, 1, 1)
    w1 = w.abs().sum((1, 2, 3)).reshape(1, -1, 1, 1)
    x1 = xi.abs().sum(1, keepdim=True)
    bound = ACTS[act][1] * (sx / 2 * w1 + x1 * sw / 2 + x.shape[1] * sx * sw / 4)
    if residual is not None:
        y = y + residual.double()
    return y, bound


def test_act_table_matches_the_kernels():
    assert set(ACTS) == set(K.DW_ACT_CODES)


# -- the kernel against its definition ---------------------------------------------------------

@native
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_equals_quantize_rows_then_conv(shape, isa):
    """Every activation, with and without gates and residual: the kernel's output is the float64
    conv of quantize_rows(x * gate) with the dequantized weight, to float rounding (8 eps * M)."""
    x, weight, bias, gate, res = _case(*shape)
    co = shape[-1]
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    worst = 0.0
    for act in K.DW_ACT_CODES:
        for g in (None, gate):
            for r in (None, res):
                out = K.pointwise_q8(x, panels, cols, co, act, residual=r, gate=g)
                assert out.shape == (shape[0], co, shape[2], shape[3]) and out.dtype == torch.float32
                assert out.is_contiguous(memory_format=torch.channels_last)
                ref, mag = _oracle(x, deq, bias, act, g, r)
                ratio = ((out.double() - ref).abs() / (EPS * mag)).max().item()
                worst = max(worst, ratio)
                assert ratio <= 8, (act, g is not None, r is not None, ratio)
    assert worst > 0 or shape[1] == 1  # the check compares numbers, not two copies of one


@native
@pytest.mark.parametrize("shape", SHAPES[1:5], ids=lambda s: "x".join(map(str, s)))
def test_vnni_avx2_and_plain_c_agree(shape):
    """The int32 sums are exact and the bytes the same, so the three codes differ by the
    epilogue's float rounding only (4 eps * M); VNNI and AVX2 share the epilogue's arithmetic
    (exp16 repeats exp_v step for step), so they are equal bit for bit."""
    x, weight, bias, gate, res = _case(*shape, seed=1)
    co = shape[-1]
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    try:
        for act in K.DW_ACT_CODES:
            out = {}
            for level, code in LEVELS.items():
                K.set_int8_isa(code)
                if K.int8_isa() == code:  # else not on this CPU (plain C always is)
                    out[level] = K.pointwise_q8(x, panels, cols, co, act, residual=res, gate=gate)
            _, mag = _oracle(x, deq, bias, act, gate, res)
            if len(out) < 2:
                pytest.skip("this CPU runs only the plain C code")
            for level, y in out.items():
                assert ((y.double() - out["plain_c"].double()).abs() <= 4 * EPS * mag).all(), (act, level)
            if "vnni" in out and "avx2" in out:
                assert torch.equal(out["vnni"], out["avx2"]), act
    finally:
        K.set_int8_isa(K.INT8_BEST)


# products large enough for the AMX code (>= 256 rows, >= 8M multiply-adds): rows not a multiple
# of its 32-row groups, input channels not of its 64-channel tiles, an odd and an even panel count
AMX_SHAPES = [(3, 100, 13, 11, 250), (1, 200, 17, 19, 150)]


@native
@pytest.mark.parametrize("shape", AMX_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_amx_tiles_equal_the_vnni_code_bit_for_bit(shape):
    """The AMX code sums the same int32 products as the VNNI code and shares its epilogue, so
    their outputs are equal bit for bit; and both are the float64 conv of the quantized input."""
    x, weight, bias, gate, res = _case(*shape, seed=3)
    co = shape[-1]
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    try:
        K.set_int8_isa(3)
        if K.int8_isa() != 3:
            pytest.skip("this CPU (or its OS) offers no AMX tiles")
        for act in K.DW_ACT_CODES:
            K.set_int8_isa(3)
            amx = K.pointwise_q8(x, panels, cols, co, act, residual=res, gate=gate)
            assert K.int8_last_code() == 3
            K.set_int8_isa(2)
            vnni = K.pointwise_q8(x, panels, cols, co, act, residual=res, gate=gate)
            assert K.int8_last_code() == 2
            assert torch.equal(amx, vnni), act
            ref, mag = _oracle(x, deq, bias, act, gate, res)
            assert ((amx.double() - ref).abs() <= 8 * EPS * mag).all(), act
    finally:
        K.set_int8_isa(K.INT8_BEST)


@native
def test_small_products_take_the_vnni_code_even_with_amx():
    x, weight, bias, _, _ = _case(*SHAPES[4])  # 72 rows: below AMX's 256
    panels, cols, _ = K.pointwise_weight_q8(weight, bias)
    K.pointwise_q8(x, panels, cols, SHAPES[4][-1])
    assert K.int8_last_code() == min(K.int8_isa(), 2)


@native
@pytest.mark.parametrize("ci,co", [(40, 16), (100, 37), (1280, 1000)])
def test_few_rows_equal_the_same_rows_in_a_full_tile_bit_for_bit(ci, co, isa):
    """1-4 rows (the classifier at batch 1) run the few-rows tile, not 12 rows of which 11 are
    zeros: each row's outputs equal the same row's inside a 24-row product bit for bit (rows
    are quantized each over its own range, so a row's result depends on that row alone)."""
    g = torch.Generator().manual_seed(3)
    big = torch.randn(24, ci, 1, 1, generator=g) * 2
    wt, b = torch.randn(co, ci, 1, 1, generator=g), torch.randn(co, generator=g)
    res, gate = torch.randn(24, co, 1, 1, generator=g), torch.rand(24, ci, generator=g)
    panels, cols, deq = K.pointwise_weight_q8(wt, b)
    full = K.pointwise_q8(big, panels, cols, co, "silu", residual=res, gate=gate)
    for m in (1, 2, 3, 4):
        for start in (0, 9):
            rows = slice(start, start + m)
            y = K.pointwise_q8(big[rows], panels, cols, co, "silu", residual=res[rows], gate=gate[rows])
            assert torch.equal(y, full[rows]), (m, start)
    ref, mag = _oracle(big, deq, b, "silu", gate=gate, residual=res)
    assert ((full.double() - ref).abs() <= 8 * EPS * mag).all()


@pytest.mark.parametrize("shape", SHAPES[:5], ids=lambda s: "x".join(map(str, s)))
def test_kernel_within_the_quantization_bound_of_the_fp32_conv(shape, isa):
    """Against the unquantized conv: within the derived bound (s_x / 2 sum|w| + s_w / 2 sum|x|
    + K s_x s_w / 4, times the activation's Lipschitz constant) plus float rounding, and not
    exact (the rounding really happens)."""
    x, weight, bias, gate, res = _case(*shape, seed=2)
    co = shape[-1]
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    for act in ("identity", "silu", "hardswish"):
        for g, r in ((None, None), (gate, res)):
            out = K.pointwise_q8(x, panels, cols, co, act, residual=r, gate=g).double()
            ref, bound = _unquantized_bound(x, weight, bias, act, g, r)
            _, mag = _oracle(x, deq, bias, act, g, r)
            err = (out - ref).abs()
            assert (err <= bound + 8 * EPS * mag).all(), (act, (err / bound).max().item())
            assert err.max() > 1e-4 * ref.abs().max()


@native
def test_kernel_input_layouts_out_buffer_and_gate_forms(isa):
    """NCHW input and residual, gates as (N, C, 1, 1) or float64, and an ``out`` buffer give
    the very numbers of the channels-last call; ``out`` is written and returned."""
    x, weight, bias, gate, res = _case(2, 13, 5, 3, 7, seed=3)
    panels, cols, _ = K.pointwise_weight_q8(weight, bias)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    ref = K.pointwise_q8(cl(x), panels, cols, 7, "silu", residual=cl(res), gate=gate)
    assert not x.is_contiguous(memory_format=torch.channels_last)
    y = K.pointwise_q8(x, panels, cols, 7, "silu", residual=res, gate=gate.reshape(2, 13, 1, 1).double())
    assert torch.equal(y, ref)
    out = torch.full((2, 7, 5, 3), float("nan")).contiguous(memory_format=torch.channels_last)
    y = K.pointwise_q8(x, panels, cols, 7, "silu", residual=res, gate=gate, out=out)
    assert y.data_ptr() == out.data_ptr() and torch.equal(out, ref)


@native
def test_constant_rows_and_zero_gates(isa):
    """A pixel whose channels are all equal has range 0 and is represented exactly: the output is
    the conv of the true input (the same for C_in = 1, where every row is constant).  A zero
    gate makes the image's rows constant zero: the output is act(bias) + residual."""
    x, weight, bias, gate, res = _case(2, 21, 4, 5, 17, seed=4)
    x[0, :, 1, 2] = 0.7
    x[1, :, 3, 0] = -2.5
    x[1, :, 0, 0] = 0.0
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    y = K.pointwise_q8(x, panels, cols, 17, "identity").double()
    exact = F.conv2d(x.double(), deq.double(), bias.double())
    for n, h, w in ((0, 1, 2), (1, 3, 0), (1, 0, 0)):
        assert torch.allclose(y[n, :, h, w], exact[n, :, h, w], rtol=1e-6, atol=1e-6)
    gate[0] = 0
    for act in K.DW_ACT_CODES:
        y = K.pointwise_q8(x, panels, cols, 17, act, residual=res, gate=gate).double()
        want = ACTS[act][0](bias.double()).reshape(1, 17, 1, 1) + res[:1].double()
        assert torch.allclose(y[:1], want, rtol=1e-6, atol=1e-6), act
        ref, mag = _oracle(x[1:], deq, bias, act, gate[1:], res[1:])  # the other image: its own gates
        assert ((y[1:] - ref).abs() <= 8 * EPS * mag).all(), act
    one = torch.randn(2, 1, 3, 4)
    w1 = torch.randn(5, 1, 1, 1)
    p1, c1, d1 = K.pointwise_weight_q8(w1)
    assert torch.allclose(K.pointwise_q8(one, p1, c1, 5).double(), F.conv2d(one.double(), d1.double()),
                          rtol=1e-6, atol=1e-6)


@native
def test_rounding_is_half_to_even_in_both_paths(isa):
    """A row spanning 0..255 has step 1 and (x - min) * 255 / range = x exactly: x.5 values go
    to the even neighbour, in the kernel and in quantize_rows; likewise offset by -128."""
    vals = torch.tensor([0.0, 255.0, 0.5, 1.5, 2.5, 3.5, 254.5, 127.5])
    want = torch.tensor([0.0, 255.0, 0.0, 2.0, 2.0, 4.0, 254.0, 128.0])
    x = torch.stack([vals, vals - 128.0]).reshape(1, 2, 8, 1).transpose(1, 2)  # 2 pixels, 8 channels
    wantx = torch.stack([want, want - 128.0]).reshape(1, 2, 8, 1).transpose(1, 2)
    assert torch.equal(K.quantize_rows(x), wantx)
    weight = torch.eye(8).reshape(8, 8, 1, 1)
    panels, cols, deq = K.pointwise_weight_q8(weight)
    y = K.pointwise_q8(x, panels, cols, 8, "identity").double()
    assert torch.allclose(y, F.conv2d(wantx.double(), deq.double()), rtol=1e-6, atol=1e-5)


# -- quantize_rows ---------------------------------------------------------------------------

def test_quantize_rows_equals_the_float64_definition():
    """Each pixel's channels on 256 levels over its own range, computed in float64: the level
    index is the same except where (x - min) * 255 / range is within 1e-3 of a .5 (where the
    float32 evaluation may round the other way, by one level); the values are min + q * range / 255
    to float32 rounding; every value within half a step of the input; constant pixels exact."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4, 37, 9, 11, generator=g) * torch.rand(4, 1, 9, 11, generator=g) * 10 \
        + torch.randn(4, 1, 9, 11, generator=g) * 5
    x[2, :, 4, 4] = 3.25
    x[3, :, 0, 7] = -1e-3
    y = K.quantize_rows(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    xd = x.double()
    lo, hi = xd.amin(1, keepdim=True), xd.amax(1, keepdim=True)
    span = hi - lo
    const = (span == 0).expand_as(xd)
    step = torch.where(span > 0, span / 255, torch.ones_like(span))
    t = (xd - lo) / step
    q64 = torch.round(t)
    q32 = torch.round((y.double() - lo) / step)
    near_half = ((t - t.floor()) - 0.5).abs() < 1e-3
    assert torch.equal(q32[~near_half & ~const], q64[~near_half & ~const])
    assert ((q32 - q64).abs() <= 1).all() and (q32 >= 0).all() and (q32 <= 255).all()
    slack = 4 * EPS * (lo.abs() + hi.abs())
    assert ((y.double() - (lo + q32 * span / 255)).abs() <= slack).all()
    assert ((y.double() - xd).abs() <= span / 510 + slack).all()
    assert torch.equal(y[const], x[const]) and const.sum() == 2 * 37
    c1 = torch.randn(3, 1, 4, 4, generator=g)
    assert torch.equal(K.quantize_rows(c1), c1)


# -- pointwise_weight_q8 ---------------------------------------------------------------------

@pytest.mark.parametrize("co,ci", [(1, 1), (7, 5), (16, 8), (17, 13), (33, 64)])
def test_weight_panels_cols_and_dequantized_weight(co, ci):
    """Panels hold round(w / scale) (scale = max |w| / 127 per output channel, float64 oracle)
    four input channels of one output channel adjacent, 16 output channels per panel, zero
    padded; cols = (scale, scale * row sum, bias), zero past C_out; the dequantized weight is
    q * scale, within half a step of w; quantizing it again is exact."""
    g = torch.Generator().manual_seed(co * 100 + ci)
    w = torch.randn(co, ci, 1, 1, generator=g) * torch.rand(co, 1, 1, 1, generator=g) * 3
    b = torch.randn(co, generator=g)
    panels, cols, deq = K.pointwise_weight_q8(w, b)
    p, k4 = (co + 15) // 16, (ci + 3) // 4
    assert panels.dtype == torch.int8 and tuple(panels.shape) == (p, k4, 16, 4)
    # panels lie whole AMX tiles (16 quads) apart, zeros between: the AMX code reads whole tiles
    assert panels.stride() == (64 * 16 * ((ci + 63) // 64), 64, 4, 1)
    assert not torch.as_strided(panels, (p, panels.stride(0) // 64, 16, 4), panels.stride())[:, k4:].any()
    assert cols.dtype == torch.float32 and tuple(cols.shape) == (3, p * 16)
    assert deq.dtype == torch.float32 and deq.shape == w.shape
    full = panels.permute(0, 2, 1, 3).reshape(p * 16, k4 * 4).long()  # [out channel, in channel]
    for o in range(min(co, 3)):  # the layout spelled out: panel o // 16, quad k // 4, lane o % 16, byte k % 4
        for k in range(ci):
            assert panels[o // 16, k // 4, o % 16, k % 4] == full[o, k]
    wd = w.double().reshape(co, ci)
    scale = wd.abs().amax(1) / 127
    t = wd / scale[:, None]
    q = torch.round(t).long()
    near_half = ((t - t.floor()) - 0.5).abs() < 1e-4
    assert torch.equal(full[:co, :ci][~near_half], q[~near_half])
    assert ((full[:co, :ci] - q).abs() <= 1).all()
    assert (full[:co, :ci].abs().amax(1) == 127).all()  # the largest weight of each channel is +-127
    assert (full[co:] == 0).all() and (full[:, ci:] == 0).all()
    assert torch.allclose(cols[0, :co].double(), scale, rtol=1e-6, atol=0)
    assert torch.allclose(cols[1, :co].double(), scale * full[:co].sum(1).double(), rtol=1e-5, atol=1e-6)
    assert torch.equal(cols[2, :co], b) and (cols[:, co:] == 0).all()
    assert torch.allclose(deq.double().reshape(co, ci), full[:co, :ci].double() * scale[:, None], rtol=1e-6, atol=0)
    assert ((deq.double().reshape(co, ci) - wd).abs() <= scale[:, None] / 2 + 4 * EPS * wd.abs()).all()
    p2, c2, d2 = K.pointwise_weight_q8(deq, b)
    assert torch.equal(p2, panels) and torch.allclose(c2, cols, rtol=1e-6, atol=0) and torch.equal(d2, deq)
    assert (K.pointwise_weight_q8(w)[1][2] == 0).all()  # no bias: zeros


@native
def test_zero_weight_row_has_no_division_by_zero(isa):
    """An all-zero output channel: finite scale, zero int8 row and dequantized row, and the
    kernel's output for that channel is act(bias) exactly as the oracle's."""
    x, weight, bias, gate, _ = _case(2, 10, 3, 3, 18, seed=6)
    weight[3] = 0
    weight[17] = 0  # the second panel's only live channel
    panels, cols, deq = K.pointwise_weight_q8(weight, bias)
    assert torch.isfinite(cols).all() and torch.isfinite(deq).all()
    full = panels.permute(0, 2, 1, 3).reshape(-1, panels.shape[1] * 4)
    assert (full[3] == 0).all() and (full[17] == 0).all() and (deq[3] == 0).all() and (cols[1, 3] == 0)
    y = K.pointwise_q8(x, panels, cols, 18, "silu", gate=gate).double()
    assert torch.isfinite(y).all()
    for o in (3, 17):
        assert torch.allclose(y[:, o], F.silu(bias[o].double()).expand_as(y[:, o]), rtol=1e-6, atol=1e-7)
    ref, mag = _oracle(x, deq, bias, "silu", gate)
    assert ((y - ref).abs() <= 8 * EPS * mag).all()


# -- argument checks -------------------------------------------------------------------------

@native
def test_bad_arguments_raise_value_errors_naming_the_problem():
    x, weight, bias, gate, res = _case(2, 12, 4, 4, 7, seed=7)
    panels, cols, _ = K.pointwise_weight_q8(weight, bias)
    q8 = K.pointwise_q8
    with pytest.raises(ValueError, match="float32"):
        q8(x.double(), panels, cols, 7)
    with pytest.raises(ValueError, match="4-D"):
        q8(x[0], panels, cols, 7)
    p8, c8, _ = K.pointwise_weight_q8(torch.randn(7, 8, 1, 1))
    with pytest.raises(ValueError, match=r"panels / cols .*\(7, 12, 1, 1\)"):  # weight for 8 input channels
        q8(x, p8, c8, 7)
    with pytest.raises(ValueError, match="panels / cols"):  # 20 outputs need two panels
        q8(x, panels, cols, 20)
    with pytest.raises(ValueError, match="panels / cols"):
        q8(x, panels.float(), cols, 7)
    with pytest.raises(ValueError, match="panels / cols"):
        q8(x, panels, cols.double(), 7)
    with pytest.raises(ValueError, match="panels / cols"):
        q8(x, panels, cols[:2], 7)
    with pytest.raises(ValueError, match="act must be one of"):
        q8(x, panels, cols, 7, "mish")
    with pytest.raises(ValueError, match="residual"):
        q8(x, panels, cols, 7, residual=res[:, :6])
    with pytest.raises(ValueError, match="residual"):
        q8(x, panels, cols, 7, residual=res[:1])
    with pytest.raises(ValueError, match="gate"):
        q8(x, panels, cols, 7, gate=gate[:1])
    with pytest.raises(ValueError, match="gate"):
        q8(x, panels, cols, 7, gate=torch.rand(2, 13))
    with pytest.raises(ValueError, match="out must be"):
        q8(x, panels, cols, 7, out=torch.empty(2, 7, 4, 4))  # NCHW, not channels-last
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 1, 1\)"):
        K.pointwise_weight_q8(torch.randn(4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 1, 1\)"):
        K.pointwise_weight_q8(torch.randn(4, 4))


# -- non-finite and degenerate rows ------------------------------------------------------------

@native
def test_nan_in_a_pixel_propagates_like_the_plain_path(isa):
    x, weight, _, _, _ = _case(1, 20, 2, 2, 4, seed=8)
    x[0, 3, 0, 0] = float("nan")
    panels, cols, deq = K.pointwise_weight_q8(weight)
    y = K.pointwise_q8(x, panels, cols, 4)
    assert torch.isnan(F.conv2d(K.quantize_rows(x), deq)[0, :, 0, 0]).all()  # the plain path
    assert torch.isnan(y[0, :, 0, 0]).all()


@native
def test_tiny_range_rows_are_their_minimum_and_finite(isa):
    # 255 / range overflows below ~7.5e-37: a pixel whose range is below Q8_MIN_SPAN is stored as
    # its minimum (error below Q8_MIN_SPAN), in the kernel and in quantize_rows alike; a pixel
    # just above it is still rounded to 256 levels
    weight = torch.eye(4).reshape(4, 4, 1, 1)
    panels, cols, deq = K.pointwise_weight_q8(weight)
    for x in (torch.tensor([0.0, 1e-37, 5e-38, 0.0]), torch.tensor([-3.0, -3.0 + 1e-31, -3.0, -3.0])):
        x = x.reshape(1, 4, 1, 1)
        plain, native = K.quantize_rows(x), K.pointwise_q8(x, panels, cols, 4)
        assert torch.isfinite(plain).all() and torch.isfinite(native).all()
        assert torch.equal(plain, torch.full_like(x, x.min().item()))
        assert ((native - x).abs() <= K.Q8_MIN_SPAN).all()
    x = torch.tensor([1.0, 1.0 + 2e-7 * 255, 1.0, 1.0]).reshape(1, 4, 1, 1)  # range well above it
    assert K.quantize_rows(x)[0, 1, 0, 0] > 1.0
    assert K.pointwise_q8(x, panels, cols, 4)[0, 1, 0, 0] > 1.0


@native
def test_a_range_beyond_float_makes_the_pixel_nan_in_both_paths(isa):
    x = torch.tensor([-3e38, 3e38, 0.0, 1.0]).reshape(1, 4, 1, 1)  # max - min overflows
    panels, cols, deq = K.pointwise_weight_q8(torch.randn(3, 4, 1, 1))
    assert torch.isnan(K.quantize_rows(x)).all()
    assert torch.isnan(K.pointwise_q8(x, panels, cols, 3)).all()


# -- quantize_dynamic --------------------------------------------------------------------------

MODELS = {"efficientnet_b0": dict(width=0.5, depth=0.5), "mobilenet_v3_small": {}}


@functools.lru_cache(maxsize=None)
def _built(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = randomize_bn(effnets.create_model(name, num_classes=10, **MODELS[name]), seed=seed).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(100 + seed))
    return types.SimpleNamespace(name=name, model=model, before=before, opt=effnets.optimize(model),
                                 q=quantize_dynamic(model), x=x)


@pytest.fixture(params=list(MODELS))
def net(request):
    if K.library() is None or not K.pointwise_available():
        pytest.skip("these checks compare the native kernels with the plain path")
    return _built(request.param)


def _pointwise_convs(model):
    """The names quantize_dynamic must pick, from the *original* model: 1x1 stride-1 ungrouped
    convs outside squeeze-excites (those become matrix products), named as the optimized copy
    names their fused module (ConvBnAct.conv -> ConvBnAct), and the linear layers (the
    classifier)."""
    return {n.removesuffix(".conv") for n, m in model.named_modules()
            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
            and m.stride == (1, 1) and ".se." not in n} | _linears(model)


def _linears(model):
    return {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def _as_conv(m, x):
    """An int8 layer's (input, weight, activation) as a 1x1 conv: a linear layer's (N, K) input
    is the (N, K, 1, 1) map."""
    if isinstance(m, FastLinear):
        return x[:, :, None, None], m.weight[:, :, None, None], "identity"
    return x, m.weight, m.pw_act


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _plain(monkeypatch):
    """Makes FusedConvAct & co. take their plain (trace / export) path in eager mode."""
    monkeypatch.setattr(O, "_plain_mode", lambda: True)


def test_int8_layers_are_exactly_the_pointwise_convs(net):
    q, opt = net.q, net.opt
    names = q.effnets_optimized["int8_layers"]
    assert len(names) == len(set(names)) and set(names) == _pointwise_convs(net.model)
    info = q.effnets_optimized
    assert info["dtype"] == "int8_dynamic" and info["min_channels"] == 0 and info["vnni"] == K.int8_fast()
    assert info["int8_code"] == {3: "amx", 2: "avx512-vnni", 1: "avx2", 0: "plain C", -1: "pytorch"}[K.int8_isa()]
    fused = {n: m for n, m in q.named_modules() if isinstance(m, (FusedConvAct, FastLinear))}
    assert {n for n, m in fused.items() if isinstance(m, FastLinear)} == _linears(net.model) != set()
    ref = dict(opt.named_modules())
    for n, m in fused.items():
        assert m.int8 == (n in names), n
        w, w32 = m.weight.double(), ref[n].weight.double()
        if w.ndim == 2:  # the classifier: one scale per output row, as a 1x1 conv's
            w, w32 = w[:, :, None, None], w32[:, :, None, None]
        assert torch.equal(m.bias, ref[n].bias), n
        if not m.int8:
            assert torch.equal(m.weight, ref[n].weight), n
            continue
        assert "int8" in repr(m)
        scale = w32.abs().amax((1, 2, 3), keepdim=True) / 127  # from the fp32 (BN-folded) weight
        assert ((w - w32).abs() <= scale / 2 + 4 * EPS * w32.abs()).all(), n  # + float32 rounding of q * scale
        k = w / scale
        assert ((k - k.round()).abs() < 1e-3).all() and (k.round().abs() <= 127).all(), n
    for k, v in net.model.state_dict().items():  # the original untouched
        assert torch.equal(v, net.before[k]), k


def test_logits_close_to_the_fp32_model_and_every_int8_layer_runs_the_kernel(net, monkeypatch):
    calls = record_calls(monkeypatch, K, "pointwise_q8_into", lambda *a, **kw: kw.get("gate") is not None)
    # an expand conv in one pass with its depthwise conv (optimize's forward_expanded) runs the int8 GEMM there
    fused = record_calls(monkeypatch, K, "expand_depthwise_into", lambda *a, **kw: a[1].dtype == torch.int8)
    with torch.inference_mode():
        ref, out = net.opt(net.x), net.q(net.x)
    names = net.q.effnets_optimized["int8_layers"]
    assert len(calls) + sum(fused) == len(names)  # one kernel call per int8 layer
    if net.name == "efficientnet_b0":  # every block has a squeeze-excite: its gate folded into conv_pwl
        assert sum(calls) == sum(n.endswith("conv_pwl") for n in names) > 0
    err = _rel(out, ref)
    assert 1e-5 < err < 5e-2, err  # int8 really ran, within the quantization bound (module docstring)
    assert (out.argmax(1) == ref.argmax(1)).sum() >= 14
    with torch.inference_mode():
        assert torch.equal(net.q(net.x), out)  # deterministic, kept buffers and caches included


def test_native_and_plain_paths_compute_the_same_layer_by_layer(net, monkeypatch):
    """Each int8 layer's own input run through the native kernel, the plain path (what traces
    and exports hold) and the no-native-library path: float tolerance apart.  (Whole models
    differ more: rounding-boundary cascades, module docstring.)"""
    q = net.q
    names = q.effnets_optimized["int8_layers"]
    inputs = {}
    hooks = [q.get_submodule(n).register_forward_pre_hook(
        lambda m, a, n=n: inputs.__setitem__(n, a[0].clone())) for n in names]
    try:
        with torch.inference_mode():
            q(net.x[:4])
    finally:
        for h in hooks:
            h.remove()
    assert set(inputs) == set(names)
    native_out = {}
    with torch.inference_mode():
        for n in names:
            native_out[n] = q.get_submodule(n)(inputs[n])
        with monkeypatch.context() as mp:
            _plain(mp)
            plain_out = {n: q.get_submodule(n)(inputs[n]) for n in names}
        with monkeypatch.context() as mp:
            mp.setattr(K, "_TRIED", True)
            mp.setattr(K, "_LIB", None)
            nolib_out = {n: q.get_submodule(n)(inputs[n]) for n in names}
    for n in names:
        m = q.get_submodule(n)
        assert getattr(m, "act", None) is None
        x, w, act = _as_conv(m, inputs[n])
        ref, mag = _oracle(x, w, m.bias, act)
        ref, mag = ref.reshape(native_out[n].shape), mag.reshape(native_out[n].shape)
        assert ((native_out[n].double() - ref).abs() <= 8 * EPS * mag).all(), n
        assert ((plain_out[n].double() - ref).abs() <= 8 * EPS * mag).all(), n
        assert torch.equal(nolib_out[n], plain_out[n]), n


@native
def test_gated_int8_forward_native_equals_plain(monkeypatch):
    """_lowp_forward with squeeze-excite gates (what forward_gated folds in) on the kernel and on
    the plain path: both the quantize_rows(x * gate) conv."""
    net = _built("efficientnet_b0")
    name = next(n for n in net.q.effnets_optimized["int8_layers"] if n.endswith("conv_pwl"))
    m = net.q.get_submodule(name)
    c = m.weight.shape[1]
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, c, 5, 7, generator=g) * 2
    gate = torch.rand(3, c, generator=g)
    ref, mag = _oracle(x, m.weight, m.bias, m.pw_act, gate)
    with torch.inference_mode():
        y = m._lowp_forward(x, gate)
        with monkeypatch.context() as mp:
            _plain(mp)
            p = m._lowp_forward(x, gate)
            p4 = m._lowp_forward(x, gate.reshape(3, c, 1, 1))
    for t in (y, p, p4):
        assert ((t.double() - ref).abs() <= 8 * EPS * mag).all()


def test_min_channels_keeps_narrow_convs_fp32(net):
    names = net.q.effnets_optimized["int8_layers"]
    counts = sorted({net.q.get_submodule(n).weight.shape[1] for n in names})
    cut = counts[len(counts) // 2]  # some layers on either side
    q = quantize_dynamic(net.model, min_channels=cut)
    names = set(q.effnets_optimized["int8_layers"])
    assert q.effnets_optimized["min_channels"] == cut
    ref = dict(net.opt.named_modules())
    want = {n for n in _pointwise_convs(net.model) if ref[n].weight.shape[1] >= cut}
    assert names == want and 0 < len(names) < len(_pointwise_convs(net.model))
    for n, m in q.named_modules():
        if isinstance(m, (FusedConvAct, FastLinear)):
            assert m.int8 == (n in names), n
            if not m.int8:
                assert torch.equal(m.weight, ref[n].weight), n
    x = net.x[:4]
    with torch.inference_mode():
        out, fp32 = q(x), net.opt(x)
    assert 1e-6 < _rel(out, fp32) < 5e-2
    none = quantize_dynamic(net.model, min_channels=10 ** 6)
    assert none.effnets_optimized["int8_layers"] == []
    assert not any(getattr(m, "int8", False) for m in none.modules())
    with torch.inference_mode():
        assert _rel(none(x), fp32) < 1e-6


def test_negative_min_channels_is_a_config_error():
    model = effnets.create_model("mobilenet_v3_small", num_classes=4).eval()
    with pytest.raises(effnets.ConfigError, match="min_channels"):
        quantize_dynamic(model, min_channels=-1)


def test_deepcopy_pickle_and_new_weights(net, tmp_path):
    """Copies (the int8 panels are rebuilt, not carried) give the same outputs; weights loaded
    in place afterwards (load_state_dict) drop the kernel's cached int8 panels."""
    x = net.x[:4]
    with torch.inference_mode():
        ref = net.q(x)  # builds the panels first: they must not travel
    buf = io.BytesIO()
    torch.save(net.q, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    twin = copy.deepcopy(net.q)
    for m in (loaded, twin):
        assert m.effnets_optimized == net.q.effnets_optimized
        assert sum(getattr(k, "int8", False) for k in m.modules()) == len(net.q.effnets_optimized["int8_layers"])
        with torch.inference_mode():
            assert torch.equal(m(x), ref)
    other = _built(net.name, seed=1)
    with torch.inference_mode():
        want = other.q(x)
        twin.load_state_dict(other.q.state_dict())
        got = twin(x)
    assert _rel(want, ref) > 1e-2 and torch.equal(got, want)


def test_traced_model_runs_the_plain_arithmetic(net, monkeypatch):
    """torch.jit.trace records quantize_rows + conv (one rounding per int8 layer); the trace
    gives the plain-mode model's outputs to float rounding at the traced and another size and
    batch, and the eager (native) model's within the quantization bound."""
    q = net.q
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(q, (net.x[:2],), check_trace=False)
    graph = str(traced.inlined_graph)
    assert graph.count("aten::round") == len(q.effnets_optimized["int8_layers"])
    small = torch.randn(3, 3, 48, 48, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        eager = q(net.x)
        with monkeypatch.context() as mp:
            _plain(mp)
            plain, plain_small = q(net.x), q(small)
        tr, tr_small = traced(net.x), traced(small)
    assert _rel(tr, plain) < 1e-5 and _rel(tr_small, plain_small) < 1e-5
    assert _rel(tr, eager) < 5e-2 and (tr.argmax(1) == eager.argmax(1)).sum() >= 14


def test_onnx_export_runs_the_same_arithmetic(net, tmp_path):
    """ONNX (the repository's exporter, unverified, then onnxruntime): one int8 layer alone
    matches the kernel to float rounding; the whole model the eager one within the
    quantization bound."""
    ort = pytest.importorskip("onnxruntime")
    from effnets.export import export_onnx
    q = net.q
    name = [n for n in q.effnets_optimized["int8_layers"] if isinstance(q.get_submodule(n), FusedConvAct)][-1]
    layer = q.get_submodule(name)
    xin = torch.randn(2, layer.weight.shape[1], 5, 6, generator=torch.Generator().manual_seed(12)) * 2
    path = tmp_path / "layer.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, (xin,), str(path), input_names=["x"], dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"x": xin.numpy()})[0]).double()
    ref, mag = _oracle(xin, layer.weight, layer.bias, layer.pw_act)
    with torch.inference_mode():
        kernel = layer(xin).double()
    assert ((got - ref).abs() <= 8 * EPS * mag).all() and ((kernel - ref).abs() <= 8 * EPS * mag).all()
    report = export_onnx(q, tmp_path / "model.onnx", input_size=64, verify=False)
    sess = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    x = net.x[:4]
    out = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.inference_mode():
        eager, fp32 = q(x), net.opt(x)
    assert out.shape == eager.shape and _rel(out, eager) < 5e-2 and _rel(out, fp32) < 5e-2


@native
def test_torchscript_export_of_a_quantize_dynamic_model_verifies(tmp_path):
    # the exporters' reference run takes the plain path (optimize._plain_mode inside
    # int8_glue.aten_ops): it computes what the trace holds, so no rounding-boundary cascade
    from effnets.export import export_torchscript
    report = export_torchscript(_built("efficientnet_b0").q, tmp_path / "b0.pt", input_size=96)
    assert report["max_rel_err"] < 1e-4


def test_quantize_dynamic_without_native_kernels_still_quantizes(monkeypatch):
    model = effnets.create_model("mobilenet_v3_small", num_classes=4).eval()
    monkeypatch.setattr(K, "_TRIED", True)
    monkeypatch.setattr(K, "_LIB", None)
    q = quantize_dynamic(model)
    assert set(q.effnets_optimized["int8_layers"]) == _pointwise_convs(model)


@native
def test_quantize_dynamic_warns_where_only_plain_c_can_run():
    model = effnets.create_model("mobilenet_v3_small", num_classes=4).eval()
    try:
        K.set_int8_isa(0)
        with pytest.warns(RuntimeWarning, match="plain C"):
            q = quantize_dynamic(model)
        assert q.effnets_optimized["int8_code"] == "plain C"
        K.set_int8_isa(1)
        if K.int8_isa() == 1:
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                assert quantize_dynamic(model).effnets_optimized["int8_code"] == "avx2"
    finally:
        K.set_int8_isa(K.INT8_BEST)
    with pytest.raises(ValueError, match="level"):
        K.set_int8_isa(4)


def test_optimize_dtype_int8_dynamic_entry_point():
    from effnets.errors import ConfigError
    model = effnets.create_model("mobilenet_v3_small", num_classes=4).eval()
    q = effnets.optimize(model, dtype="int8_dynamic")
    assert q.effnets_optimized["dtype"] == "int8_dynamic" and q.effnets_optimized["int8_layers"]
    assert all(m.int8 for n, m in q.named_modules() if n in q.effnets_optimized["int8_layers"])
    with pytest.raises(ConfigError, match="drop calibration"):
        effnets.optimize(model, dtype="int8_dynamic", calibration=torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="drop compile"):
        effnets.optimize(model, dtype="int8_dynamic", compile=True)
    with pytest.raises(ConfigError, match="int8_dynamic"):  # static int8 without images names the alternative
        effnets.optimize(model, dtype="int8")


@native
def test_int8_linear_quantizes_each_row_of_its_last_dim(monkeypatch):
    """quantize_dynamic makes every linear layer int8 (FastLinear.int8): a (B, T, C) input (an
    attention block's) has each of its B x T rows of C values rounded over its own range, on the
    kernel and on the plain path alike, to float rounding of the float64 definition."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.GELU(), torch.nn.Linear(24, 10)).eval()
    q = quantize_dynamic(net)
    assert q.effnets_optimized["int8_layers"] == ["0", "2"] and all(isinstance(q[i], FastLinear) for i in (0, 2))
    lin = q[0]
    x = torch.randn(3, 7, 40) * torch.linspace(0.1, 5, 7)[None, :, None]  # rows of very different ranges
    rows = x.reshape(-1, 40)
    ref, mag = _oracle(rows[:, :, None, None], lin.weight[:, :, None, None], lin.bias, "identity")
    ref, mag = ref.reshape(3, 7, 24), mag.reshape(3, 7, 24)
    with torch.inference_mode():
        native = lin(x)
        with monkeypatch.context() as mp:
            _plain(mp)
            plain = lin(x)
    for y in (native, plain):
        assert y.shape == (3, 7, 24) and ((y.double() - ref).abs() <= 8 * EPS * mag).all()
    per_tensor = torch.nn.functional.linear(K.quantize_rows(x.reshape(1, -1, 1, 1)).reshape(x.shape), lin.weight,
                                            lin.bias)  # one range for everything: not what runs
    assert _rel(native, per_tensor) > 1e-3
