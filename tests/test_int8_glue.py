"""Native glue of int8 models (effnets.int8_glue) against the torch.ao ops it replaces."""
import copy
import sys

import pytest
import torch
import torch.nn.functional as F

import effnets
from effnets import int8_glue as G
from effnets import kernels as K
from effnets.optimize import quantize_int8

O = sys.modules["effnets.optimize"]

native = pytest.mark.skipif(K.library() is None, reason=f"native kernels unavailable: {K.why_unavailable}")


@pytest.fixture(params=["avx512", "plain"])
def isa(request):
    """The AVX-512 code (VBMI table lookup, 16-lane gate) where the CPU has it, and the plain C."""
    if request.param == "avx512" and not K.set_avx512(True):
        pytest.skip("this CPU has no AVX-512F")
    K.set_avx512(request.param == "avx512")
    yield request.param
    K.set_avx512(True)


def _q(shape, scale, zp, seed=0, channels_last=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.quantize_per_tensor(torch.randn(shape, generator=g) * 3, scale, zp, torch.quint8)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _bytes(t):
    return t.int_repr().int()


@native
@pytest.mark.parametrize("act,fn", [("SiLU", F.silu), ("Hardswish", F.hardswish), ("Sigmoid", torch.sigmoid),
                                    ("ReLU6", F.relu6), ("GELU", F.gelu)])
@pytest.mark.parametrize("shape,channels_last", [((2, 40, 9, 9), True), ((3, 7, 5, 3), False), ((1, 100), False)])
def test_table_activation_equals_dequantize_act_quantize(act, fn, shape, channels_last, isa):
    """The 256-entry table gives the very bytes of dequantize -> float act -> quantize (sizes not a
    multiple of 64: the masked tail of the VBMI loop), in the input's layout."""
    x = _q(shape, 0.05, 120, channels_last=channels_last and len(shape) == 4)
    scale, zp = torch.tensor(0.03), torch.tensor(10)  # as the converted graph holds them
    ref = torch.quantize_per_tensor(fn(x.dequantize()), scale, zp, torch.quint8)
    y = G.quantized_act(x, scale, zp, act)
    assert torch.equal(_bytes(y), _bytes(ref)) and (y.q_scale(), y.q_zero_point()) == (ref.q_scale(), 10)
    assert y.is_contiguous(memory_format=torch.channels_last) == x.is_contiguous(memory_format=torch.channels_last)


@native
@pytest.mark.parametrize("act,fn", [("SiLU", F.silu), ("Hardswish", F.hardswish), ("ReLU", F.relu)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_float_activation_and_quantization_in_one_pass(act, fn, channels_last, isa):
    """After a layer kept in float: act and quantize_per_tensor in one native pass, equal to
    PyTorch's two except where effnets' SiLU (relative error 3e-7) lands on the other side of a
    rounding boundary."""
    x = torch.randn(3, 24, 11, 7, generator=torch.Generator().manual_seed(4)) * 4
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    scale, zp = torch.tensor(0.04), torch.tensor(12)
    ref = torch.quantize_per_tensor(fn(x), scale, zp, torch.quint8)
    y = G.quantized_act(x, scale, zp, act)
    diff = (_bytes(y) - _bytes(ref)).abs()
    assert y.is_quantized and diff.max() <= 1 and (diff > 0).float().mean() < 0.001
    assert (y.q_scale(), y.q_zero_point()) == (ref.q_scale(), 12) and y.is_contiguous(
        memory_format=torch.channels_last) == channels_last


@native
@pytest.mark.parametrize("c", [40, 16, 3, 257])
def test_gate_product_matches_quantized_mul(c, isa):
    """x * gate with one gate per image and channel: within one step of quantized.mul (which
    rounds a float product computed in another order), saturating at both ends."""
    x = _q((3, c, 6, 5), 0.05, 100, seed=1)
    g = torch.quantize_per_tensor(torch.rand(3, c, 1, 1, generator=torch.Generator().manual_seed(2)), 1 / 255, 0,
                                  torch.quint8)
    for scale, zp in [(0.04, 100), (0.002, 128)]:  # the second saturates many values
        ref = torch.ops.quantized.mul(x, g, scale, zp)
        y = G.quantized_gate_mul(x, g, torch.tensor(scale), torch.tensor(zp))
        diff = (_bytes(y) - _bytes(ref)).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.01
        exact = torch.round(x.dequantize().double() * g.dequantize().double() / scale + zp).clamp(0, 255)
        assert (_bytes(y) - exact).abs().max() <= 1


@native
def test_gate_product_falls_back_where_it_does_not_apply():
    x = _q((2, 8, 4, 4), 0.05, 100, channels_last=False)  # NCHW: torch.ao's op
    g = torch.quantize_per_tensor(torch.rand(2, 8, 1, 1), 1 / 255, 0, torch.quint8)
    assert torch.equal(_bytes(G.quantized_gate_mul(x, g, 0.04, 90)), _bytes(torch.ops.quantized.mul(x, g, 0.04, 90)))
    y = _q((2, 8, 4, 4), 0.05, 100)  # two full tensors: not a gate
    assert torch.equal(_bytes(G.quantized_gate_mul(y, y, 0.04, 90)), _bytes(torch.ops.quantized.mul(y, y, 0.04, 90)))


@native
@pytest.mark.parametrize("shape", [(2, 40, 28, 28), (1, 3, 1, 1), (4, 19, 5, 7)])
def test_quantized_mean_is_the_exact_mean_of_the_bytes(shape):
    """A squeeze-excite's pooling: the mean of the stored bytes rounded half to even (exact; the
    float mean torch.ao takes differs from it at most by one step, at ties)."""
    x = _q(shape, 0.05, 7, seed=3)
    y = G.quantized_mean(x, (2, 3), keepdim=True)
    exact = torch.round(x.int_repr().double().mean((2, 3), keepdim=True))
    assert torch.equal(_bytes(y), exact.int()) and (y.q_scale(), y.q_zero_point()) == (x.q_scale(), x.q_zero_point())
    assert (_bytes(y) - _bytes(x.mean((2, 3), keepdim=True))).abs().max() <= 1
    assert G.quantized_mean(x, [-2, -1]).shape == shape[:2]  # keepdim False, negative dims
    assert torch.equal(G.quantized_mean(x, 1).int_repr(), x.mean(1).int_repr())  # other dims: torch.ao's op


@native
def test_fused_int8_model_runs_the_kernels_and_keeps_its_outputs(monkeypatch):
    """quantize_int8 rewrites the glue of the converted graph (every SiLU between int8 layers,
    squeeze-excite product and pooling, here with only the image conv in fp32); the logits stay
    within a few quantization steps of the graph torch.ao converted, and the model deep-copies."""
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10).eval()
    calib = torch.randn(4, 3, 64, 64)
    fused = quantize_int8(model, calib, batches=1, reduce_range=False, keep_fp32=["stem.conv"])
    monkeypatch.setattr(O, "fuse_int8_glue", lambda gm: {})
    plain = quantize_int8(model, calib, batches=1, reduce_range=False, keep_fp32=["stem.conv"])
    counts = fused.effnets_optimized["native_glue"]
    n_se = sum(1 for m in model.modules() if type(m).__name__ == "SqueezeExcite")
    acts = sum(1 for n in plain.graph.nodes if n.target is torch.quantize_per_tensor
               and type(dict(plain.named_modules()).get(n.args[0].target)) in G._ACTS)
    assert counts == {"activations": acts, "gate_products": n_se, "means": n_se} and acts >= 2 * n_se
    modules = dict(fused.named_modules())
    assert not any(n.target is torch.quantize_per_tensor and type(modules.get(n.args[0].target)) in G._ACTS
                   for n in fused.graph.nodes)  # no float activation left before a quantize step
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        a, b = plain(x), fused(x)
        assert (a - b).abs().max() <= 0.1 * a.abs().max()
        assert torch.equal(copy.deepcopy(fused)(x), b)


@native
def test_exporters_run_the_glue_on_torch_ao_ops(monkeypatch, tmp_path):
    """Within ``aten_ops()`` (the exporters' reference run) no glue kernel runs, so a TorchScript
    export, which holds torch.ao's ops, is verified against the same arithmetic; outside it the
    kernels run."""
    from conftest import record_calls
    from effnets.export import export_torchscript
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", width=0.25, depth=0.25, num_classes=5).eval()
    q = quantize_int8(model, torch.randn(4, 3, 64, 64), batches=2, keep_fp32=["stem.conv"])
    calls = [record_calls(monkeypatch, K, n) for n in ("quantized_lut", "quantized_gate_mul",
                                                         "quantized_channel_mean", "quantize_act")]
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode(), G.aten_ops():
        q(x)
    assert not any(calls)
    with torch.inference_mode():
        q(x)
    assert all(calls)
    assert export_torchscript(q, tmp_path / "q.pt", input_size=64)["max_rel_err"] < 1e-4


@native
def test_quantizing_passes_saturate_far_out_of_range_values(isa):
    """Values far beyond the int32 range of the rounding step saturate at 255 / 0 (an unclamped
    conversion gives INT_MIN, which would come out as 0)."""
    x = torch.tensor([1e12, -1e12, 3e9, 1.0] * 5).reshape(1, 20, 1, 1)
    y = G.quantized_act(x, torch.tensor(0.01), torch.tensor(5), "ReLU")
    ref = torch.quantize_per_tensor(F.relu(x), 0.01, 5, torch.quint8)
    assert torch.equal(_bytes(y), _bytes(ref)) and _bytes(y).flatten()[:3].tolist() == [255, 5, 255]
    q = _q((1, 20, 2, 2), 1.0, 0)
    g = torch.full((1, 20, 1, 1), 1.0)
    big = G.quantized_gate_mul(q, g, torch.tensor(1e-9), torch.tensor(0))
    assert bool((_bytes(big)[q.int_repr() > 0] == 255).all())
