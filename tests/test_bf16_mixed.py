"""bf16 1x1 convs and linear layers with fp32 sums (``kernels.pointwise_bf16``,
``optimize(dtype="bf16_mixed")`` = ``quantize_bf16``).

Oracles: the kernel against float64 convolution of the bf16-rounded operands (PyTorch's own
``.to(torch.bfloat16)``, round to nearest even, rounds them): a product of two bf16 values is
exact in fp32, so the kernel may differ from that only by fp32 summation, a few ulp of the sum of
the terms' magnitudes; the model against the fp32 optimized model (bf16 rounding: ~0.4% per value)
and against its own plain path (what exports and CPUs without AVX512-BF16 run)."""
from __future__ import annotations

import copy
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

import effnets
from conftest import randomize_bn, record_calls
from effnets import kernels as K
from effnets.errors import ConfigError
from effnets.optimize import FastLinear, FusedConvAct, quantize_bf16

O = sys.modules["effnets.optimize"]
EPS = torch.finfo(torch.float32).eps
ACTS = {"identity": lambda t: t, "silu": F.silu, "relu": F.relu, "hardswish": F.hardswish, "relu6": F.relu6}

bf16_native = pytest.mark.skipif(not K.bf16_fast(), reason="needs effnets' kernels on a CPU with AVX512-BF16")

# (N, C_in, H, W, C_out): C_in odd (a half-filled last pair), below and above one 32-value row
# vector; C_out 1, 7, 17, 33, 40 (partial panels, one and two-panel tiles); rows 15, 21, 30, 40,
# 72, 6 and 1 (mostly not multiples of the 12-row tile; 1-4: the few-rows tile)
SHAPES = [(1, 5, 3, 5, 1), (2, 13, 5, 3, 7), (3, 36, 7, 1, 17), (2, 64, 4, 5, 33), (2, 131, 6, 6, 40),
          (1, 1, 2, 3, 3), (1, 3, 1, 1, 16)]


def _case(n, ci, h, w, co, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, ci, h, w, generator=g) * (0.2 + 3 * torch.rand(1, ci, 1, 1, generator=g))
    weight = torch.randn(co, ci, 1, 1, generator=g) * 0.3
    bias, gate, res = torch.randn(co, generator=g), torch.rand(n, ci, generator=g) * 2, torch.randn(n, co, h, w, generator=g)
    return x, weight, bias, gate, res


def _oracle(x, w_rounded, bias, act, gate=None, residual=None):
    """``act(conv2d(bf16(x * gate), w) + b) + residual`` in float64 and the magnitude of the terms
    the fp32 sums and epilogue add (the tolerance is a multiple of it)."""
    xi = x if gate is None else x * gate.reshape(*gate.shape, 1, 1)
    xr = K.round_bf16(xi).double()
    y = ACTS[act](F.conv2d(xr, w_rounded.double(), bias.double()))
    mag = F.conv2d(xr.abs(), w_rounded.double().abs(), bias.double().abs())
    if residual is not None:
        y, mag = y + residual.double(), mag + residual.double().abs()
    return y, mag


@bf16_native
@pytest.mark.parametrize("act", ["identity", "silu", "relu", "hardswish"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_equals_the_rounded_operands_product(shape, act):
    x, wt, b, gate, res = _case(*shape)
    panels, wr = K.pointwise_weight_bf16(wt)
    for g, r in ((None, None), (gate, res)):
        y = K.pointwise_bf16(x, panels, b, shape[-1], act, residual=r, gate=g)
        ref, mag = _oracle(x, wr, b, act, g, r)
        assert ((y.double() - ref).abs() <= 8 * EPS * mag + 1e-30).all(), (shape, act, g is None)
    # the bf16 rounding is real: on these inputs the result differs from the fp32 conv's
    y32 = F.conv2d(x.double(), wt.double(), b.double())
    assert not torch.allclose(K.pointwise_bf16(x, panels, b, shape[-1]).double(), y32, rtol=1e-5, atol=1e-6)


def test_weight_panels_layout_and_rounding():
    g = torch.Generator().manual_seed(1)
    wt = torch.randn(17, 5, 1, 1, generator=g)
    panels, wr = K.pointwise_weight_bf16(wt)
    assert panels.dtype == torch.bfloat16 and tuple(panels.shape) == (2, 3, 16, 2)
    assert torch.equal(wr, wt.to(torch.bfloat16).float())
    w2 = wt.reshape(17, 5).to(torch.bfloat16)
    for o in (0, 5, 16):  # panel o // 16, channel o % 16: input channels 2j, 2j + 1 adjacent
        for j in range(3):
            for t in range(2):
                k = 2 * j + t
                want = w2[o, k] if k < 5 else torch.tensor(0, dtype=torch.bfloat16)
                assert panels[o // 16, j, o % 16, t] == want
    assert (panels[1, :, 1:] == 0).all()  # output channels 17..31: padding
    with pytest.raises(ValueError, match="C_out, C_in, 1, 1"):
        K.pointwise_weight_bf16(torch.randn(4, 3, 3, 3))


@bf16_native
@pytest.mark.parametrize("ci,co", [(40, 16), (101, 37), (1280, 1000)])
def test_few_rows_equal_the_same_rows_in_a_full_tile_bit_for_bit(ci, co):
    """1-4 rows run the few-rows tile: each row's outputs equal that row's inside a 24-row product
    (12-row tiles) bit for bit: the same pair products summed in the same order."""
    g = torch.Generator().manual_seed(3)
    big = torch.randn(24, ci, 1, 1, generator=g)
    wt, b = torch.randn(co, ci, 1, 1, generator=g), torch.randn(co, generator=g)
    res, gate = torch.randn(24, co, 1, 1, generator=g), torch.rand(24, ci, generator=g)
    panels, wr = K.pointwise_weight_bf16(wt)
    full = K.pointwise_bf16(big, panels, b, co, "silu", residual=res, gate=gate)
    for m in (1, 2, 3, 4):
        for start in (0, 9):
            rows = slice(start, start + m)
            y = K.pointwise_bf16(big[rows], panels, b, co, "silu", residual=res[rows], gate=gate[rows])
            assert torch.equal(y, full[rows]), (m, start)
    ref, mag = _oracle(big, wr, b, "silu", gate, res)
    assert ((full.double() - ref).abs() <= 8 * EPS * mag).all()


@bf16_native
def test_streaming_stores_give_the_same_bits():
    lib = K.library()
    x, wt, b, _, res = _case(2, 24, 9, 7, 48)
    panels, _ = K.pointwise_weight_bf16(wt)
    want = K.pointwise_bf16(x, panels, b, 48, "silu", residual=res)
    default = lib.eff_pw_set_stream_bytes(0)
    try:
        for co in (48, 40):  # whole panels streamed; a masked tail stored as usual
            p = K.pointwise_weight_bf16(wt[:co])[0]
            y = K.pointwise_bf16(x, p, b[:co], co, "silu", residual=res[:, :co])
            assert torch.equal(y, want[:, :co]), co
    finally:
        lib.eff_pw_set_stream_bytes(default)


@bf16_native
def test_expand_and_depthwise_in_one_pass_equal_the_two_calls_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 24, 11, 9, generator=g).contiguous(memory_format=torch.channels_last)
    wt, pb = torch.randn(72, 24, 1, 1, generator=g) * 0.2, torch.randn(72, generator=g)
    dw, db = torch.randn(72, 1, 3, 3, generator=g), torch.randn(72, generator=g)
    panels, _ = K.pointwise_weight_bf16(wt)
    taps = K.depthwise_taps(dw)
    silu = K.DW_ACT_CODES["silu"]
    for stride in (1, 2):
        mid = torch.empty(2, 72, 11, 9).contiguous(memory_format=torch.channels_last)
        K.pointwise_bf16_into(x, panels, pb, mid, silu)
        oh, ow = (11 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
        apart = torch.empty(2, 72, oh, ow).contiguous(memory_format=torch.channels_last)
        sums_apart = torch.empty(2, 72)
        K.depthwise_into(mid, taps, db, apart, sums_apart, stride, (1, 1), silu)
        one = torch.empty_like(apart)
        sums = torch.empty(2, 72)
        K.expand_depthwise_into(x, panels, pb, silu, taps, db, one, sums, stride, (1, 1), silu)
        assert torch.equal(one, apart) and torch.allclose(sums, sums_apart, rtol=1e-5), stride


@bf16_native
def test_bad_arguments_name_the_problem():
    x, wt, b, _, _ = _case(1, 8, 3, 3, 4)
    panels, _ = K.pointwise_weight_bf16(wt)
    with pytest.raises(ValueError, match="pointwise_weight_bf16"):
        K.pointwise_bf16(x, panels.float(), b, 4)
    with pytest.raises(ValueError, match="pointwise_weight_bf16"):
        K.pointwise_bf16(x, panels, b, 20)  # panels of a 4-channel weight for 20 outputs
    with pytest.raises(ValueError, match="float32 CPU"):
        K.pointwise_bf16(x.double(), panels, b, 4)
    with pytest.raises(ValueError, match="gate"):
        K.pointwise_bf16(x, panels, b, 4, gate=torch.ones(1, 7))


def _model(name="efficientnet_b0", seed=0):
    torch.manual_seed(seed)
    return randomize_bn(effnets.create_model(name, num_classes=10), seed=seed).eval()


def _pointwise_and_linear_names(model):
    names = {n.removesuffix(".conv") for n, m in model.named_modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
             and m.stride == (1, 1) and ".se." not in n}
    return names | {n for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def test_quantize_bf16_rounds_exactly_the_pointwise_and_linear_weights():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # CPUs without AVX512-BF16 warn (tested below)
        q = effnets.optimize(model, dtype="bf16_mixed")
    ref = effnets.optimize(model)
    info = q.effnets_optimized
    assert info["dtype"] == "bf16_mixed" and info["native"] == K.bf16_fast()
    assert set(info["bf16_layers"]) == _pointwise_and_linear_names(model) and len(info["bf16_layers"]) > 30
    r = dict(ref.named_modules())
    for n, m in q.named_modules():
        if not isinstance(m, (FusedConvAct, FastLinear)):
            continue
        assert m.bf16 == (n in info["bf16_layers"]) and not m.int8, n
        if m.bf16:
            assert torch.equal(m.weight, r[n].weight.to(torch.bfloat16).float()) and "bf16" in repr(m), n
            assert not torch.equal(m.weight, r[n].weight), n
        else:
            assert torch.equal(m.weight, r[n].weight), n
    assert [n for n, m in q.named_modules() if m.training] == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@bf16_native
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large"])
def test_model_runs_the_kernel_in_every_bf16_layer_and_stays_close_to_fp32(name, monkeypatch):
    model = _model(name)
    q, ref = quantize_bf16(model), effnets.optimize(model)
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        yr, y0 = ref(x), q(x)  # the first call times each layer's routes once
    calls = record_calls(monkeypatch, K, "pointwise_bf16_into", lambda *a, **kw: kw.get("gate") is not None)
    fused = record_calls(monkeypatch, K, "expand_depthwise_into", lambda *a, **kw: a[1].dtype == torch.bfloat16)
    with torch.inference_mode():
        y = q(x)
    assert torch.equal(y, y0)
    assert len(calls) + sum(fused) == len(q.effnets_optimized["bf16_layers"])  # one kernel call per bf16 layer
    err = ((y - yr).norm() / yr.norm()).item()
    assert 1e-5 < err < 3e-2, err  # bf16 really ran, within its rounding (~0.4% a value, a few layers deep)
    assert torch.equal(y.argmax(1), yr.argmax(1))
    with torch.inference_mode():
        assert torch.equal(q(x), y)  # deterministic, kept buffers included


@bf16_native
def test_native_and_plain_paths_agree_layer_by_layer(monkeypatch):
    """Each bf16 layer's own input through the kernel and through the plain path (exports, other
    devices, CPUs without AVX512-BF16): float tolerance apart, both equal to the oracle."""
    q = quantize_bf16(_model())
    names = q.effnets_optimized["bf16_layers"]
    inputs = {}
    hooks = [q.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: inputs.__setitem__(n, a[0].clone()))
             for n in names]
    try:
        with torch.inference_mode():
            q(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    finally:
        for h in hooks:
            h.remove()
    assert set(inputs) == set(names)
    with torch.inference_mode():
        native = {n: q.get_submodule(n)(inputs[n]) for n in names}
        with monkeypatch.context() as mp:
            mp.setattr(O, "_plain_mode", lambda: True)
            plain = {n: q.get_submodule(n)(inputs[n]) for n in names}
    for n in names:
        m = q.get_submodule(n)
        x, w, act = ((inputs[n][:, :, None, None], m.weight[:, :, None, None], "identity")
                     if isinstance(m, FastLinear) else (inputs[n], m.weight, m.pw_act))
        ref, mag = _oracle(x, w, m.bias, act)
        ref, mag = ref.reshape(native[n].shape), mag.reshape(native[n].shape)
        assert ((native[n].double() - ref).abs() <= 8 * EPS * mag).all(), n
        assert ((plain[n].double() - ref).abs() <= 8 * EPS * mag).all(), n


def test_without_avx512_bf16_it_warns_and_computes_the_plain_path(monkeypatch):
    model = _model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with monkeypatch.context() as mp:
        mp.setattr(K, "bf16_fast", lambda: False)
        with pytest.warns(RuntimeWarning, match="AVX512-BF16"):
            q = quantize_bf16(model)
        calls = record_calls(mp, K, "pointwise_bf16_into")
        with torch.inference_mode():
            y = q(x)
        assert calls == [] and q.effnets_optimized["native"] is False
        # each bf16 layer computes what its plain (export) path computes, bit for bit
        layers = [q.get_submodule(n) for n in ("stages.1.0.conv_pw", "stages.2.1.conv_pwl", "classifier")]
        inputs = [torch.randn(2, 16, 20, 20), torch.randn(2, 240, 8, 8), torch.randn(2, 1280)]
        with torch.inference_mode():
            got = [m(t) for m, t in zip(layers, inputs)]
            mp.setattr(O, "_plain_mode", lambda: True)
            assert all(torch.equal(m(t), g) for m, t, g in zip(layers, inputs, got))
    with torch.inference_mode():
        yr = effnets.optimize(model)(x)
    assert ((y - yr).norm() / yr.norm()).item() < 3e-2


@bf16_native
def test_pickled_copy_computes_the_same():
    q = quantize_bf16(_model())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        y = q(x)
    assert any(m._lowp is not None for m in q.modules() if isinstance(m, FusedConvAct))
    c = copy.deepcopy(q)  # derived weights (bf16 panels) are not copied: rebuilt from the weight
    assert all(m._lowp is None for m in c.modules() if isinstance(m, FusedConvAct))
    with torch.inference_mode():
        assert torch.equal(c(x), y)


def test_optimize_dtype_entry_point_errors():
    model = _model()
    with pytest.raises(ConfigError, match="bf16_mixed"):
        effnets.optimize(model, dtype="bf16_mixed", compile=True)
    with pytest.raises(ConfigError, match="bf16_mixed"):
        effnets.optimize(model, dtype="bf16_mixed", calibration=torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="bf16_mixed"):
        effnets.optimize(model, dtype="bf16_typo")
