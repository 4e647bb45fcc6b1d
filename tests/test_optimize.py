"""effnets.optimize: output equality of the optimized copy for every family, bf16, int8."""
import copy
import sys
import types

import pytest
import torch
from torch import nn

import effnets
from conftest import record_calls
from effnets.optimize import FusedConvAct, fold_bn, quantize_int8


def _perturb_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def _model_and_input(name: str, size: int) -> tuple[nn.Module, torch.Tensor]:
    """Seed 0: ``name`` with 10 classes and perturbed BN (eval), and a batch of 2 images."""
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model(name, num_classes=10)).eval()
    return model, torch.randn(2, 3, size, size)


def _rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


CASES = [
    ("efficientnet_b0", {}, 96),
    ("efficientnet_b0", {"padding": "same"}, 97),  # TF SAME padding, odd size
    ("mobilenet_v3_large", {}, 96),
    ("mobilenet_v2", {}, 64),
    ("mobilenet_v1", {}, 64),
    ("efficientnetv2_b0", {}, 96),
    ("resnet_rs_50", {}, 64),
]


@pytest.mark.parametrize("name,overrides,size", CASES)
def test_optimized_matches_original(name, overrides, size):
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model(name, num_classes=10, **overrides)).eval()
    before = copy.deepcopy(model.state_dict())
    opt = effnets.optimize(model)
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        ref, out = model(x), opt(x)
    assert out.shape == ref.shape
    assert _rel_err(out, ref) < 1e-4
    # BN really folded, the original left untouched
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules() if not isinstance(m, FusedConvAct)) \
        or name.startswith("coatnet")
    assert any(isinstance(m, FusedConvAct) for m in opt.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_16", "coatnet_0"])
def test_optimized_transformers(name):
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model(name, num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert _rel_err(opt(x), model(x)) < 1e-4


def test_fold_bn_exact():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    bn = _perturb_bn(nn.Sequential(nn.BatchNorm2d(6)))[0].eval()
    w, b = fold_bn(conv, bn)
    x = torch.randn(2, 4, 8, 8)
    ref = bn(conv(x))
    out = nn.functional.conv2d(x, w, b, padding=1)
    assert torch.allclose(out, ref, atol=1e-5)


def test_plain_ops_without_mkldnn_path(monkeypatch):
    """The fallback path (CUDA, compile, export) computes the same as the fused oneDNN path."""
    import importlib
    O = importlib.import_module("effnets.optimize")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("mobilenet_v3_large", num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fused = opt(x)
        monkeypatch.setattr(O, "_MKLDNN", False)
        plain = opt(x)
        ref = model(x)
    assert _rel_err(plain, ref) < 1e-4 and _rel_err(fused, ref) < 1e-4


def test_bf16_close_and_fp32_logits():
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model, dtype=torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out, ref = opt(x), model(x)
    assert out.dtype == torch.float32
    assert _rel_err(out, ref) < 0.1


@pytest.mark.skipif(effnets.kernels.library() is None, reason="native kernels not built")
@pytest.mark.parametrize("shape", [(3, 37, 11, 13), (1, 96, 56, 56), (2, 1, 1, 1)])
def test_bf16_channel_sums_equal_the_float64_sums(shape):
    """One fp32 pass over the bf16 values: within fp32 summation error of the float64 sums of the
    same bf16 values; NCHW input or another dtype is refused (None) for the caller's fallback."""
    g = torch.Generator().manual_seed(shape[1])
    x = (torch.randn(*shape, generator=g) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    s = effnets.kernels.bf16_channel_sums(x)
    ref = x.double().sum((2, 3))
    assert s.dtype == torch.float32 and s.shape == shape[:2]
    tol = 4 * shape[2] * shape[3] * 2.0 ** -24 * x.double().abs().sum((2, 3)) + 1e-30
    assert ((s.double() - ref).abs() <= tol).all()
    assert effnets.kernels.bf16_channel_sums(x.contiguous()) is None or shape[2] * shape[3] == 1
    assert effnets.kernels.bf16_channel_sums(x.float().contiguous(memory_format=torch.channels_last)) is None


def test_bf16_squeeze_excite_pools_natively_and_matches_the_mean_path(monkeypatch):
    """optimize(dtype=bf16) pools each squeeze-excite's input with the native bf16 sums; the
    logits equal (to bf16 rounding) those of the same model pooling with PyTorch's mean."""
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model, dtype=torch.bfloat16)
    x = torch.randn(2, 3, 64, 64)
    calls = []
    real = effnets.kernels.bf16_channel_sums
    monkeypatch.setattr(effnets.kernels, "bf16_channel_sums", lambda t: calls.append(t.shape) or real(t))
    with torch.inference_mode():
        native = opt(x)
    n_se = sum(type(m).__name__ == "FastSqueezeExcite" for m in opt.modules())
    if effnets.kernels.library() is not None:
        assert len(calls) == n_se == 16
    monkeypatch.setattr(effnets.kernels, "bf16_channel_sums", lambda t: None)
    with torch.inference_mode():
        plain = opt(x)
    assert _rel_err(native, plain) < 0.02 and native.argmax(1).tolist() == plain.argmax(1).tolist()


def test_bad_arguments():
    model = effnets.create_model("mobilenet_v1", num_classes=10)
    with pytest.raises(effnets.ConfigError):
        effnets.optimize(model, mode="fast")
    with pytest.raises(effnets.ConfigError):
        effnets.optimize(model, dtype=torch.float16)
    with pytest.raises(effnets.ConfigError):
        effnets.optimize(model, dtype="int8")  # no calibration data


def _toy_data(n, size=32, seed=0):
    """4 classes: which quadrant holds a bright square (learnable in a few dozen steps)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    h = size // 2
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, r * h:(r + 1) * h, q * h:(q + 1) * h] += 1.5
    return x, y


def _trained_tiny():
    torch.manual_seed(0)
    model = effnets.create_model("mobilenet_v1", num_classes=4, width=0.25, dropout=0.0)
    x, y = _toy_data(256)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for epoch in range(5):
        for i in range(0, len(x), 32):
            loss = nn.functional.cross_entropy(model(x[i:i + 32]), y[i:i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def test_int8_trained_tiny_model_agrees():
    model = _trained_tiny()
    calib, _ = _toy_data(64, seed=1)
    held, yh = _toy_data(128, seed=2)
    q = effnets.optimize(model, dtype="int8", calibration=calib)
    with torch.inference_mode():
        ref = model(held).argmax(1)
        out = q(held).argmax(1)
    assert (ref == yh).float().mean() > 0.7  # the fp32 model has really learned something
    assert (out == ref).float().mean() >= 0.9
    # both activation ranges were calibrated; the one closer to fp32 was kept
    errs = q.effnets_optimized["calibration_rel_error"]
    chosen = q.effnets_optimized["reduce_range"]
    assert errs[f"reduce_range={chosen}"] == min(errs.values()) and len(errs) == 2


def test_int8_onnxruntime_trained_tiny_model_agrees(tmp_path):
    """optimize(dtype="int8", backend="onnxruntime"): ORT static quantization of the exported
    graph (QDQ); the image conv stays float, the others are quantized; predictions agree."""
    pytest.importorskip("onnxruntime")
    import onnx
    from effnets.export import export_onnx
    from effnets.export.runtime import _quantize_onnx
    model = _trained_tiny()
    calib, _ = _toy_data(64, seed=1)
    held, _ = _toy_data(128, seed=2)
    q = effnets.optimize(model, dtype="int8", backend="onnxruntime", calibration=calib)
    with torch.inference_mode():
        assert (q(held).argmax(1) == model(held).argmax(1)).float().mean() >= 0.9
    export_onnx(model, tmp_path / "m.onnx", input_size=32)
    graph = onnx.load(_quantize_onnx(str(tmp_path / "m.onnx"), str(tmp_path), list(calib.split(16)), None)).graph
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    fed_int8 = [producers.get(n.input[0]) is not None and producers[n.input[0]].op_type == "DequantizeLinear"
                for n in convs]
    assert not fed_int8[0] and all(fed_int8[1:])
    with pytest.raises(effnets.ConfigError, match="nope"):
        _quantize_onnx(str(tmp_path / "m.onnx"), str(tmp_path), [calib], ["nope"])


def test_int8_calibration_from_image_folder(tmp_path):
    from PIL import Image
    x, _ = _toy_data(4, size=40)
    for i, img in enumerate(x):
        arr = ((img.clamp(-1, 2) + 1) / 3 * 255).byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
    model = effnets.create_model("mobilenet_v1", num_classes=4, width=0.25).eval()
    q = quantize_int8(model, str(tmp_path))
    with torch.inference_mode():
        assert q(torch.randn(1, 3, 224, 224)).shape == (1, 4)


def test_int8_keeps_the_image_conv_in_fp32():
    """The first conv reads the image and stays fp32 (type nn.Conv2d, not a quantized conv);
    the other convs are int8; a wrong name in keep_fp32 is a ConfigError naming it."""
    from torch.ao.nn.quantized import Conv2d as QConv2d
    model = effnets.create_model("mobilenet_v1", num_classes=4, width=0.25).eval()
    calib = torch.randn(16, 3, 64, 64)
    q = quantize_int8(model, calib)
    assert type(q.get_submodule("stem.conv")) is nn.Conv2d
    assert sum(isinstance(m, QConv2d) for m in q.modules()) >= 10
    all_int8 = quantize_int8(model, calib, keep_fp32=[])
    assert not any(type(m) is nn.Conv2d for m in all_int8.modules())
    with pytest.raises(effnets.errors.ConfigError, match="nope"):
        quantize_int8(model, calib, keep_fp32=["nope"])


def test_int8_default_fp32_layers_found_from_structure():
    """Default keep_fp32 on an MBConv net, found without model names: the image conv, every
    depthwise conv, every squeeze-excite module and every linear projection stay fp32 (they
    cost B0 trained on digits 6 points of agreement in int8); pointwise expansions, the head
    conv and the classifier are quantized."""
    from torch.ao.nn.quantized import Conv2d as QConv2d, Linear as QLinear
    from effnets.optimize import _default_fp32_layers
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=4).eval()
    calib = torch.randn(4, 3, 64, 64)
    keep = _default_fp32_layers(model, calib[:1])
    names = dict(model.named_modules())
    dw = [n for n, m in names.items() if isinstance(m, nn.Conv2d) and m.groups > 1]
    se = [n for n in names if n.endswith(".se")]
    pwl = [n for n in names if n.endswith("conv_pwl.conv")]
    assert set(keep) == {"stem.conv", *dw, *se, *pwl}
    q = quantize_int8(model, calib, reduce_range=False)
    qnames = dict(q.named_modules())
    assert all(type(qnames[n]) is nn.Conv2d for n in dw + pwl + [n + ".conv_reduce" for n in se])
    assert all(isinstance(qnames[n], QConv2d) for n in names if n.endswith("conv_pw.conv"))
    assert isinstance(qnames["conv_head.conv"], QConv2d) and isinstance(qnames["classifier"], QLinear)
    # a conv seeing 1x1 only because the image is tiny is no squeeze-excite: MobileNetV1 at 32 px
    tiny = effnets.create_model("mobilenet_v1", num_classes=4, width=0.25).eval()
    assert set(_default_fp32_layers(tiny, torch.randn(1, 3, 32, 32))) == {
        "stem.conv", *(n for n, m in tiny.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1)}


@pytest.mark.slow
def test_compiled_matches_original():
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("mobilenet_v3_large", num_classes=10)).eval()
    opt = effnets.optimize(model, compile=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert _rel_err(opt(x), model(x)) < 1e-4
    assert set(opt.chosen) == {((1, 3, 64, 64), torch.float32)} and set(opt.chosen.values()) <= {"eager", "compiled"}


@pytest.mark.parametrize("eager_wins", [True, False])
def test_compile_keeps_the_faster_of_eager_and_compiled_per_shape(monkeypatch, eager_wins):
    """optimize(compile=True)'s wrapper times the eager optimized model against the compiled one
    on the first call per input shape, after warming the eager model, and runs the winner from
    then on (the compiled model only where it timed faster); with autograd on it always runs the
    compiled model.  (A stand-in for Inductor: what is timed is the choice.)"""
    from effnets.optimize import CompiledOrEager
    optimize_mod = sys.modules["effnets.optimize"]
    torch.manual_seed(0)
    model = effnets.create_model("mobilenet_v3_small", num_classes=5).eval()
    eager = effnets.optimize(model)
    compiled_calls = []

    class StandIn(nn.Module):
        def forward(self, x):
            compiled_calls.append(tuple(x.shape))
            return model(x)

    x, x2 = torch.randn(2, 3, 64, 64), torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        eager(x), eager(x2)  # its layers' own timed choices (also _faster) made before the stand-in below
    timed = []

    def faster(a, b, runs=3):  # True: a is the faster; which of a and b is compiled, the stand-in's calls tell
        n = len(compiled_calls)
        a()
        a_compiled = len(compiled_calls) > n
        b()
        timed.append(runs)
        return eager_wins != a_compiled

    monkeypatch.setattr(optimize_mod, "_faster", faster)
    eager_calls = []
    eager.register_forward_pre_hook(lambda m, a: eager_calls.append(1))
    wrapped = CompiledOrEager(eager, StandIn())
    with torch.inference_mode():
        ref = model(x)
        for _ in range(3):
            assert _rel_err(wrapped(x), ref) < 1e-4
        assert timed == [5]  # timed once for this shape (five rounds), not on every call
        assert wrapped.chosen == {((2, 3, 64, 64), torch.float32): "eager" if eager_wins else "compiled"}
        # first call: compiled once before timing, once in the timing; then once per call if it won
        assert len(compiled_calls) == 2 + (0 if eager_wins else 3)
        # the eager model: two warm-up calls before the timing, one in it, then once per call if it won
        assert len(eager_calls) == 3 + (3 if eager_wins else 0)
        wrapped(x2)
        assert timed == [5, 5] and ((1, 3, 96, 96), torch.float32) in wrapped.chosen
    before = len(compiled_calls)
    wrapped(x)  # grad enabled: not an inference call, the compiled model runs
    assert len(compiled_calls) == before + 1
    assert wrapped.card is eager.card and wrapped._orig_mod is eager  # attributes as on torch.compile's wrapper
    assert not any(name.startswith("compiled") for name, _ in wrapped.named_modules())


def test_native_silu_path_equals_onednn_swish(monkeypatch):
    """optimize runs SiLU with effnets' native kernel after the conv when it can; the oneDNN
    fused-swish path (no compiler) gives the same outputs."""
    from effnets import kernels as K
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        ref, native = model(x), opt(x)
        monkeypatch.setattr(K, "_TRIED", True)
        monkeypatch.setattr(K, "_LIB", None)
        onednn = opt(x)
    assert _rel_err(native, ref) < 1e-4 and _rel_err(onednn, ref) < 1e-4


def test_onnxruntime_backend_matches_original():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    ort = effnets.optimize(model, backend="onnxruntime")
    assert not list(ort.parameters()) and ort.card is model.card
    for batch, size in ((1, 96), (3, 128)):  # dynamic batch and size
        x = torch.randn(batch, 3, size, size)
        with torch.inference_mode():
            out, ref = ort(x.contiguous(memory_format=torch.channels_last)), model(x)
        assert out.shape == ref.shape and _rel_err(out, ref) < 1e-4
    with pytest.raises(effnets.errors.InputError, match="float32"):
        ort(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(effnets.errors.InputError, match=r"\(N, C, H, W\)"):
        ort(torch.randn(3, 64, 64))
    with pytest.raises(effnets.ConfigError, match="onnxruntime"):
        effnets.optimize(model, backend="onnxruntime", compile=True)
    with pytest.raises(effnets.ConfigError, match="backend"):
        effnets.optimize(model, backend="tvm")


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "resnet_rs_50"])
def test_optimized_model_traces_as_one_graph(name):
    """torch.compile must see the optimized model without graph breaks (a break per block made
    optimize(compile=True) no faster than the peers): fullgraph=True raises on any break."""
    model = effnets.create_model(name, num_classes=10).eval()
    opt = effnets.optimize(model)
    graph = torch.compile(opt, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _rel_err(graph(x), model(x)) < 1e-4


def test_prepacked_weights_cached_per_shape_and_refreshed(monkeypatch):
    """Conv weights are reordered once per input shape (bounded cache), give the same outputs
    as unpacked weights, and are rebuilt when the weights change."""
    O = sys.modules["effnets.optimize"]  # the module (effnets.optimize is also the function)
    if not O._PREPACK:
        pytest.skip("oneDNN weight prepacking not available in this build")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model)
    convs = [m for m in opt.modules() if isinstance(m, FusedConvAct)]
    with torch.inference_mode():
        for size in (64, 72, 80, 88, 96, 64):
            out = opt(torch.randn(1, 3, size, size))
        assert max(len(c._packs) for c in convs) == O._PACK_SHAPES  # 5 shapes seen, 4 kept
        x = torch.randn(2, 3, 96, 96)
        packed = opt(x)
        monkeypatch.setattr(O, "_PREPACK", False)
        plain = opt(x)
        monkeypatch.setattr(O, "_PREPACK", True)
    assert out.shape == (1, 10)
    assert torch.allclose(packed, plain, rtol=1e-5, atol=1e-5)
    # new weights (load_state_dict copies in place): the stale packs must not be used
    other = effnets.optimize(_perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10), seed=1).eval())
    opt.load_state_dict(other.state_dict())
    with torch.inference_mode():
        assert torch.allclose(opt(x), other(x), rtol=1e-5, atol=1e-5)


def test_optimized_model_pickles_and_deep_copies(tmp_path):
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        ref = opt(x)  # packs weights first: the packs must not travel
    torch.save(opt, tmp_path / "opt.pt")
    loaded = torch.load(tmp_path / "opt.pt", weights_only=False)
    with torch.inference_mode():
        assert torch.equal(loaded(x), ref)
        assert torch.equal(copy.deepcopy(opt)(x), ref)


def test_compile_keeps_effnets_conv_kernels_as_one_op(monkeypatch):
    """optimize(compile=True) marks every fused conv to enter the graph as the opaque
    effnets::conv2d_act op (prepacked oneDNN conv + native SiLU, or the native depthwise
    kernel); the graph computes the original's outputs and holds no plain convolution.
    (Inductor itself: the slow test above.)"""
    from effnets import kernels
    dw_calls = record_calls(monkeypatch, kernels, "depthwise_forward")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    compiled = effnets.optimize(model, compile=True)
    convs = [m for m in compiled._orig_mod.modules() if isinstance(m, FusedConvAct)]
    assert convs and all(m.native_in_graph for m in convs)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    graph = torch.compile(compiled._orig_mod, backend=capture, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _rel_err(graph(x), model(x)) < 1e-4
    body = max(graphs, key=lambda g: len(g.graph.nodes))  # (the input pre-hook is a graph of its own)
    targets = [str(n.target) for n in body.graph.nodes if n.op == "call_function"]
    n_se = sum(1 for m in convs if m._graph_se)  # depthwise conv + squeeze-excite as one op
    assert sum("effnets.conv2d_act" in t for t in targets) == len(convs) - n_se
    assert sum("effnets.dw_conv_se" in t for t in targets) == n_se
    assert not any("conv2d" in t and "effnets" not in t for t in targets)
    if kernels.library() is not None:  # the depthwise convs ran effnets' kernel inside the graph
        assert len(dw_calls) == sum(1 for m in convs if m.groups > 1) == 16 == n_se
        assert not any("mean" in t for t in targets)  # the squeeze came from the depthwise kernel


def _winograd_eligible(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               and m.stride == (1, 1) and m.groups == 1 and m.in_channels % 8 == 0 and m.out_channels % 8 == 0)


@pytest.mark.parametrize("name,size", [("resnet_rs_50", 64), ("efficientnetv2_b0", 96)])
def test_winograd_convs_match_original(monkeypatch, name, size):
    """Forced on (EFFNETS_WINOGRAD=1), every eligible 3x3 conv runs Winograd F(4x4, 3x3) and the
    outputs still match the original's; forced off, none does; on "auto" each layer times both
    once per input shape and keeps its choice."""
    from effnets import kernels
    if not kernels.winograd_available():
        pytest.skip("Winograd kernels need the native build on x86 AVX2")
    opt_mod = sys.modules["effnets.optimize"]
    calls = record_calls(monkeypatch, kernels, "winograd_conv3x3")
    fused_calls = record_calls(monkeypatch, kernels, "winograd_conv3x3_fused")
    # a Fused-MBConv block's Winograd conv may run in one pass with its project conv
    one_pass = record_calls(monkeypatch, kernels, "winograd_pointwise_fused")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model(name, num_classes=10)).eval()
    n_eligible = _winograd_eligible(model)
    assert n_eligible > 0
    x = torch.randn(2, 3, size, size)
    with torch.inference_mode():
        ref = model(x)
        for mode, expected in (("1", n_eligible), ("0", 0)):
            monkeypatch.setattr(opt_mod, "_WINOGRAD", mode)
            opt = effnets.optimize(model)
            opt(x), opt(x)  # the first call times the routes, the second a Fused-MBConv's one pass
            calls.clear(), fused_calls.clear(), one_pass.clear()
            out = opt(x)
            assert len(calls) + len(fused_calls) + len(one_pass) == expected
            assert _rel_err(out, ref) < 1e-4
        monkeypatch.setattr(opt_mod, "_WINOGRAD", "auto")
        opt = effnets.optimize(model)
        assert _rel_err(opt(x), ref) < 1e-4
        layers = [(m, tuple(m_in.shape)) for m, m_in in _conv_inputs(opt, x) if m.wino_act is not None]
        choices = [m._wino[shape] for m, shape in layers]
        assert len(choices) == n_eligible and all(isinstance(c, bool) for c in choices)
        fused = [m._wino[("fused", shape)] for m, shape in layers]
        assert all(isinstance(f, bool) for f in fused)
        opt(x)  # a Fused-MBConv block's one pass timed
        calls.clear(), fused_calls.clear(), one_pass.clear()
        opt(x)  # the choices are kept: each Winograd route runs exactly where it was chosen, no more timing
        assert len(fused_calls) + len(one_pass) == sum(c and f for c, f in zip(choices, fused))
        assert len(calls) == sum(c and not f for c, f in zip(choices, fused))
        # each transformed weight (4x the weight) is held only by layers whose choice uses it
        for m, shape in layers:
            assert ("up" in m._wino) == (m._wino[shape] and m._wino[("fused", shape)])
            assert ("u" in m._wino) == (m._wino[shape] and not m._wino[("fused", shape)])
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b: False)
        lean = effnets.optimize(model)
        assert _rel_err(lean(x), ref) < 1e-4
        assert not any("u" in m._wino or "up" in m._wino for m in lean.modules() if isinstance(m, FusedConvAct))
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b: True)  # fused beats bmm, Winograd beats direct
        eager = effnets.optimize(model)
        fused_calls.clear()
        assert _rel_err(eager(x), ref) < 1e-4
        assert len(fused_calls) == n_eligible


def _conv_inputs(model: nn.Module, x: torch.Tensor) -> list[tuple[FusedConvAct, torch.Tensor]]:
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, a: seen.append((mod, a[0])))
             for m in model.modules() if isinstance(m, FusedConvAct)]
    model(x)
    for h in hooks:
        h.remove()
    return seen


def test_compiled_graph_runs_winograd_inside_the_conv_op(monkeypatch):
    from effnets import kernels
    if not kernels.winograd_available():
        pytest.skip("Winograd kernels need the native build on x86 AVX2")
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_WINOGRAD", "1")
    calls = record_calls(monkeypatch, kernels, "winograd_conv3x3")
    fused_calls = record_calls(monkeypatch, kernels, "winograd_conv3x3_fused")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("resnet_rs_50", num_classes=10)).eval()
    compiled = effnets.optimize(model, compile=True)
    graph = torch.compile(compiled._orig_mod, backend=lambda gm, ex: gm.forward, fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _rel_err(graph(x), model(x)) < 1e-4  # the first call times the two Winograd routes
        calls.clear(), fused_calls.clear()
        assert _rel_err(graph(x), model(x)) < 1e-4
    assert len(calls) + len(fused_calls) == _winograd_eligible(model)


def test_resnet_rs_block_tail_runs_as_one_native_call(monkeypatch):
    """In the optimized ResNet-RS every bottleneck's squeeze-excite, shortcut sum and ReLU run as
    one native call; outputs match the original; a hook on a squeeze-excite puts that block
    back on the module-by-module path (the hook sees the gated values)."""
    from effnets import kernels
    if kernels.library() is None:
        pytest.skip(f"native kernels unavailable: {kernels.why_unavailable}")
    tails = record_calls(monkeypatch, kernels, "se_gate_", lambda *a, **kw: kw.get("residual") is not None)
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("resnet_rs_50", num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(2, 3, 64, 64)
    n_blocks = sum(1 for m in model.modules() if type(m).__name__ == "Bottleneck")
    with torch.inference_mode():
        ref = model(x)
        assert _rel_err(opt(x), ref) < 1e-4
        assert tails == [True] * n_blocks
        seen = []
        for m in (model, opt):
            m.get_submodule("stages.1.0.se").register_forward_hook(lambda mod, a, out: seen.append(out.clone()))
        tails.clear()
        assert _rel_err(opt(x), model(x)) < 1e-4
        assert tails.count(True) == n_blocks - 1 and _rel_err(seen[0], seen[1]) < 1e-4


@pytest.mark.parametrize("name,size", [("efficientnet_b0", 96), ("mobilenet_v3_large", 96), ("resnet_rs_50", 64)])
def test_native_pointwise_convs_match_original(monkeypatch, name, size):
    """With every 1x1 conv on effnets' GEMM (its choice against oneDNN forced by stubbing the
    timing) the optimized model still matches the original, squeeze-excite products folded into
    the project convs included; with it switched off none runs it."""
    from effnets import kernels
    if not kernels.pointwise_available():
        pytest.skip("the native GEMM needs the build on x86 AVX2")
    opt_mod = sys.modules["effnets.optimize"]
    # the classifier's calls (FastLinear: always the GEMM, not timed) noted apart from the convs'
    from effnets.optimize import FastLinear
    in_linear, real_native = [False], FastLinear._native

    def linear_native(self, *a):
        in_linear[0] = True
        try:
            return real_native(self, *a)
        finally:
            in_linear[0] = False
    monkeypatch.setattr(FastLinear, "_native", linear_native)
    calls = record_calls(monkeypatch, kernels, "pointwise_into",
                         lambda *a, **kw: "linear" if in_linear[0] else kw.get("gate") is not None)
    fused = record_calls(monkeypatch, kernels, "expand_depthwise_into")  # expand conv + depthwise in one pass
    model, x = _model_and_input(name, size)
    se_then_1x1 = [n for n, m in model.named_modules() if getattr(m, "se", None) is not None
                   and (getattr(m, "conv_pwl", None) is not None or type(m).__name__ == "DepthwiseSeparable")]
    with torch.inference_mode():
        ref = model(x)
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b: False)  # oneDNN / the SE pass never "faster"
        opt = effnets.optimize(model)
        calls.clear()
        out = opt(x)
        assert calls.count("linear") == 1  # the classifier
        calls[:] = [c for c in calls if c != "linear"]
        native = [m for m in opt.modules() if isinstance(m, FusedConvAct) and m.pw_act is not None]
        assert len(calls) + len(fused) == len(native) > 0 and sum(calls) == len(se_then_1x1)  # every SE folded
        assert _rel_err(out, ref) < 1e-4
        assert _rel_err(opt(x), ref) < 1e-4  # second call: kept choices and buffers
        if se_then_1x1:  # a hook on a squeeze-excite sees its gated output: that one is not folded
            seen = []
            for m in (model, opt):
                m.get_submodule(se_then_1x1[0] + ".se").register_forward_hook(
                    lambda mod, a, o: seen.append(o.clone()))
            calls.clear()
            assert _rel_err(opt(x), model(x)) < 1e-4
            assert sum(c is True for c in calls) == len(se_then_1x1) - 1 and _rel_err(seen[0], seen[1]) < 1e-4
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b: True)  # oneDNN always faster
        calls.clear()
        fused.clear()
        assert _rel_err(effnets.optimize(model)(x), ref) < 1e-4
        assert calls == ["linear"] and not fused  # chosen per layer: oneDNN's everywhere (the classifier aside)
        monkeypatch.setattr(opt_mod, "_NATIVE_PW", False)
        calls.clear()
        assert _rel_err(effnets.optimize(model)(x), ref) < 1e-4
        assert not calls  # the classifier too


@pytest.mark.skipif(not effnets.kernels.pointwise_available(), reason="the native GEMM needs the build on x86 AVX2")
@pytest.mark.parametrize("every,flips", [(3, True), (0, False)])
def test_page_faults_that_start_later_still_hand_a_layer_to_our_kernel(monkeypatch, every, flips):
    """Where oneDNN's conv won and faulted neither of the first two calls, the counting goes on
    for outputs of 1 MiB and more: when fresh pages come later on some calls only (every third
    here, as when another model runs between turns), the mean of the last four counts is charged
    and the layer goes to ours; with no faults, oneDNN keeps it and the counting continues."""
    opt_mod = sys.modules["effnets.optimize"]
    calls = [0, 0]  # getrusage calls, faults so far

    class FakeResource:  # the second getrusage of each conv call sees its faults (from the third call on)
        RUSAGE_SELF = 0

        @staticmethod
        def getrusage(who):
            calls[0] += 1
            n = calls[0] // 2  # the conv call this reading ends
            if calls[0] % 2 == 0 and every and n > 2 and n % every == 0:
                calls[1] += 4000
            return type("usage", (), {"ru_minflt": calls[1]})()

    def library_wins(a, b):
        a(), b()
        return True
    monkeypatch.setattr(opt_mod, "resource", FakeResource)
    monkeypatch.setattr(opt_mod, "_faster", library_wins)
    monkeypatch.setattr(opt_mod, "_page_fault_cost", lambda: 1e-3)
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 64, 3, 2, 1)
    layer = FusedConvAct(conv).eval()
    x = torch.randn(2, 3, 130, 130)  # output 2.2 MB
    key = tuple(x.shape)
    with torch.inference_mode():
        ref = conv(x)
        outs = [layer(x) for _ in range(4)]
        assert layer._wino[("cv", key)] is False and ("faults", key) in layer._wino  # still counting
        outs += [layer(x) for _ in range(8)]
    assert layer._wino[("cv", key)] is flips and (("faults", key) in layer._wino) is not flips
    assert all(_rel_err(o, ref) < 1e-5 for o in outs)


@pytest.mark.parametrize("name,size", [("efficientnet_b0", 96), ("mobilenet_v3_large", 96)])
def test_depthwise_choice_between_native_kernel_and_onednn(monkeypatch, name, size):
    """Each depthwise conv times the native kernel against oneDNN's conv once per input shape
    (oneDNN's AVX-512 code can beat the AVX2 kernel): forced either way by stubbing the timing,
    the optimized model matches the original; on oneDNN's side no native depthwise call runs
    and the squeeze-excites pool for themselves."""
    from effnets import kernels
    if kernels.library() is None:
        pytest.skip("native kernels unavailable")
    opt_mod = sys.modules["effnets.optimize"]
    calls = record_calls(monkeypatch, kernels, "depthwise_into")
    monkeypatch.setattr(opt_mod, "_FUSE_EXPAND", False)  # every depthwise conv on its own (see the next test)
    model, x = _model_and_input(name, size)
    n_dw = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)
    with torch.inference_mode():
        ref = model(x)
        for library_faster in (False, True):
            monkeypatch.setattr(opt_mod, "_faster", lambda a, b: library_faster)
            opt = effnets.optimize(model)
            opt(x)
            calls.clear()
            assert _rel_err(opt(x), ref) < 1e-4
            dws = [m for m in opt.modules() if isinstance(m, FusedConvAct) and m.dw_act is not None]
            assert len(dws) == n_dw > 0
            assert all(v is not library_faster for m in dws for k, v in m._wino.items() if k[0] == "dw")
            assert all(any(k[0] == "dw" for k in m._wino) for m in dws)
            assert len(calls) == (0 if library_faster else n_dw)


@pytest.mark.parametrize("name,size", [("efficientnetv2_b0", 64), ("resnet_rs_50", 64), ("efficientnet_b0", 64)])
def test_stems_and_strided_convs_choose_between_the_patch_gemm_and_onednn(monkeypatch, name, size):
    """Dense convs that neither Winograd nor the 1x1 GEMM take (stems, stride-2 3x3: V2-S's
    Fused-MBConv, ResNet-RS's bottleneck and stem "pool") time the GEMM over gathered patches
    against oneDNN's conv: forced either way the optimized model matches the original, and on
    ours every such layer runs one kernels.conv_into call writing into a kept buffer."""
    from effnets import kernels
    if not kernels.pointwise_available():
        pytest.skip("the native GEMM needs the build on x86 AVX2")
    opt_mod = sys.modules["effnets.optimize"]
    calls = record_calls(monkeypatch, kernels, "conv_into")
    model, x = _model_and_input(name, size)
    with torch.inference_mode():
        ref = model(x)
        for library_faster in (False, True):
            monkeypatch.setattr(opt_mod, "_faster", lambda a, b: library_faster)
            opt = effnets.optimize(model)
            dense = [m for m in opt.modules() if isinstance(m, FusedConvAct) and m.cv_act is not None]
            assert dense and all(m.groups == 1 and m.weight.shape[-1] > 1 and m.wino_act is None for m in dense)
            assert any(m.stride[0] == 2 and m.weight.shape[1] > 3 for m in dense) or name == "efficientnet_b0"
            opt(x)
            calls.clear()
            assert _rel_err(opt(x), ref) < 1e-4
            assert len(calls) == (0 if library_faster else len(dense))
            if not library_faster:  # the same buffers on the next call (nothing else holds them)
                outs = [m._out.data_ptr() for m in dense if m.reuse_output]
                assert outs and [m._out.data_ptr() for m in dense if m.reuse_output] == outs
                opt(x)
                assert [m._out.data_ptr() for m in dense if m.reuse_output] == outs


@pytest.mark.skipif(not effnets.kernels.pointwise_available(), reason="the native GEMM needs the build on x86 AVX2")
@pytest.mark.parametrize("faults,cost,flips", [(4000, 1e-3, True), (0, 1e-3, False), (1, 1e-9, False)])
def test_page_faults_counted_in_the_model_can_hand_a_layer_to_our_kernel(monkeypatch, faults, cost, flips):
    """Where oneDNN's conv won the timing loop, its page faults in the model are counted on the
    next two calls (getrusage); at the machine's cost per fault they are added to its time and
    the choice made again: ours when oneDNN is no longer 5% faster, oneDNN's where it faults
    rarely or not at all.  The outputs are the conv's either way."""
    opt_mod = sys.modules["effnets.optimize"]
    counter = [0]

    class FakeResource:  # every getrusage call: `faults` more minor faults than the last
        RUSAGE_SELF = 0

        @staticmethod
        def getrusage(who):
            counter[0] += faults
            return type("usage", (), {"ru_minflt": counter[0]})()

    def library_wins(a, b):  # runs both (their times are kept), oneDNN "faster"
        a(), b()
        return True
    monkeypatch.setattr(opt_mod, "resource", FakeResource)
    monkeypatch.setattr(opt_mod, "_faster", library_wins)
    monkeypatch.setattr(opt_mod, "_page_fault_cost", lambda: cost)  # 4000 faults at 1 ms: 4 s
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, 3, 2, 1)
    layer = FusedConvAct(conv).eval()
    assert layer.cv_act == "identity"
    x = torch.randn(2, 3, 33, 33)
    with torch.inference_mode():
        ref = conv(x)
        outs = [layer(x) for _ in range(4)]
    key = tuple(x.shape)
    assert layer._wino[("cv", key)] is flips and ("faults", key) not in layer._wino
    assert all(_rel_err(o, ref) < 1e-5 for o in outs)


def _optimized_with(monkeypatch, model, x, faster_in, calls: list, warmup: int = 1):
    """``effnets.optimize(model)`` with every timed choice decided by ``faster_in(name of the
    function that asks)`` (``_faster``'s answer: True where its first contender wins), after
    ``warmup`` calls on ``x`` (the timings), with ``calls`` cleared."""
    opt_mod = sys.modules["effnets.optimize"]
    monkeypatch.setattr(opt_mod, "_faster", lambda a, b, runs=3: faster_in(sys._getframe(1).f_code.co_name))
    opt = effnets.optimize(model)
    for _ in range(warmup):
        opt(x)
    calls.clear()
    return opt


@pytest.mark.parametrize("name,size", [("efficientnet_b0", 96), ("mobilenet_v3_large", 96)])
def test_expand_and_depthwise_convs_run_as_one_pass_where_timed_faster(monkeypatch, name, size):
    """Each inverted-residual block times its expand + depthwise convs as one native pass against
    the two modules once per input shape: where the pass wins, the model's outputs keep the
    separate modules' bits (the same arithmetic), and the expand conv's kept buffer is released;
    where the modules apart win, or a hook is on one of them, that block runs them apart."""
    from effnets import kernels
    if kernels.library() is None or not kernels.pointwise_available():
        pytest.skip("native kernels unavailable")
    opt_mod = sys.modules["effnets.optimize"]
    fused_calls = record_calls(monkeypatch, kernels, "expand_depthwise_into")
    model, x = _model_and_input(name, size)

    def build(fuse: bool, fused_wins: bool = True):
        monkeypatch.setattr(opt_mod, "_FUSE_EXPAND", fuse)
        # every other timed choice: effnets' kernels; the pass against the modules apart: fused_wins
        return _optimized_with(monkeypatch, model, x, lambda asks: asks == "forward_expanded" and not fused_wins,
                               fused_calls)

    with torch.inference_mode():
        ref = model(x)
        y_apart = build(False)(x)
        assert not fused_calls and _rel_err(y_apart, ref) < 1e-4
        for fused_wins in (True, False):
            opt = build(True, fused_wins)
            blocks = [b for b in opt.modules() if getattr(b, "conv_pw", None) is not None and hasattr(b, "conv_dw")]
            assert len(blocks) > 5
            assert torch.equal(opt(x), y_apart)
            assert len(fused_calls) == (len(blocks) if fused_wins else 0)
            assert all([v for k, v in b.conv_dw._wino.items() if k[0] == "pw_dw"] == [fused_wins] for b in blocks)
            assert all((b.conv_pw._out is None) == fused_wins for b in blocks)
        opt = build(True)
        hooked = [b for b in opt.modules() if getattr(b, "conv_pw", None) is not None and hasattr(b, "conv_dw")][1]
        hooked.conv_pw.register_forward_hook(lambda m, args, out: None)
        assert torch.equal(opt(x), y_apart)
        assert len(fused_calls) == len(blocks) - 1


def test_fused_mbconv_expand_and_project_convs_run_as_one_pass_where_timed_faster(monkeypatch):
    """A Fused-MBConv block whose 3x3 expand conv runs the fused Winograd kernel times that conv
    + its 1x1 project conv (+ the shortcut) as one native pass against the two modules, once per
    input shape: where the pass wins, the model keeps the modules' bits (the same arithmetic) and
    the expand conv's kept buffer is released; where the modules apart win, or a hook is on one
    of them, the block runs them apart."""
    from effnets import kernels
    from effnets.blocks.mbconv import FusedMBConv
    if kernels.library() is None or not kernels.winograd_available():
        pytest.skip("native Winograd kernels unavailable")
    calls = record_calls(monkeypatch, kernels, "winograd_pointwise_fused")
    model, x = _model_and_input("efficientnetv2_b0", 96)

    def build(fused_wins: bool):
        # Winograd (its fused route) for every 3x3 stride-1 conv, effnets' kernels for the other
        # timed choices, and the one pass against the two modules: fused_wins; the first call
        # times the Winograd routes, the second the one pass
        return _optimized_with(monkeypatch, model, x, lambda asks: asks == "_conv3x3" or (
            asks == "forward_projected" and not fused_wins), calls, warmup=2)

    with torch.inference_mode():
        ref = model(x)
        y_apart = build(False)(x)
        assert not calls and _rel_err(y_apart, ref) < 1e-4
        opt = build(True)
        blocks = [b for b in opt.modules() if type(b) is FusedMBConv and b.conv_pwl is not None
                  and b.conv_exp.wino_act is not None]
        assert len(blocks) == 2  # V2-B0's stride-1 Fused-MBConv blocks with expansion
        assert torch.equal(opt(x), y_apart)
        assert len(calls) == len(blocks)
        assert all(b.conv_exp._out is None for b in blocks)

        def one_pass_choices(m):
            return [[v for k, v in b.conv_exp._wino.items() if k[0] == "wino_pw"] for b in m.modules()
                    if type(b) is FusedMBConv and b.conv_pwl is not None and b.conv_exp.wino_act is not None]
        assert one_pass_choices(opt) == [[True]] * 2
        blocks[0].conv_pwl.register_forward_hook(lambda m, args, out: None)
        assert torch.equal(opt(x), y_apart)
        assert len(calls) == len(blocks) + 1  # the hooked block apart, the other one pass
        assert one_pass_choices(build(False)) == [[False]] * 2


@pytest.mark.parametrize("dtype,panels", [("int8_dynamic", torch.int8), ("bf16_mixed", torch.bfloat16)])
def test_low_precision_expand_and_depthwise_run_as_one_pass(monkeypatch, dtype, panels):
    """dtype="int8_dynamic" / "bf16_mixed": a block's int8 or bf16 expand conv (each pixel's input
    rounded on the fly) runs inside the one pass with its depthwise conv too, with the bits of the
    two apart."""
    from effnets import kernels
    if kernels.library() is None or (dtype == "bf16_mixed" and not kernels.bf16_fast()):
        pytest.skip("native kernels (with AVX512-BF16 for bf16) unavailable")
    opt_mod = sys.modules["effnets.optimize"]
    fused_calls = record_calls(monkeypatch, kernels, "expand_depthwise_into", lambda *a, **kw: a[1].dtype)
    monkeypatch.setattr(opt_mod, "_faster", lambda a, b, runs=3: False)  # effnets' kernels, the pass included
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    x = torch.randn(2, 3, 64, 64)
    outs = []
    with torch.inference_mode():
        for fuse in (False, True):
            monkeypatch.setattr(opt_mod, "_FUSE_EXPAND", fuse)
            q = effnets.optimize(model, dtype=dtype)
            q(x)
            fused_calls.clear()
            outs.append(q(x))
            n_blocks = sum(1 for b in q.modules() if getattr(b, "conv_pw", None) is not None and hasattr(b, "conv_dw"))
            assert fused_calls == ([panels] * n_blocks if fuse else [])
    assert n_blocks > 5 and torch.equal(outs[0], outs[1])


def test_kept_output_buffers_are_never_written_while_someone_holds_them():
    """A block-internal output buffer is written again on the next call only when nothing else
    references it: a held tensor or a view of it keeps its values and the layer takes a new
    buffer; a hook turns reuse off; released, the buffer is reused (no fresh pages)."""
    from effnets import kernels
    if kernels.library() is None:
        pytest.skip("native kernels unavailable")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model)
    block = opt.stages[1][0]
    conv = block.conv_pw
    # expand, depthwise and project (the block's output) keep buffers, and the stem (on the patch
    # GEMM where that won); the head does not
    assert conv.reuse_output and block.conv_dw.reuse_output and block.conv_pwl.reuse_output
    assert opt.stem.reuse_output and not opt.conv_head.reuse_output
    x1, x2 = torch.randn(1, 16, 24, 24), torch.randn(1, 16, 24, 24)
    with torch.inference_mode():
        y1 = conv(x1)
        first = y1.clone()
        y2 = conv(x2)  # y1 still held: a new buffer
        assert y2.data_ptr() != y1.data_ptr() and torch.equal(y1, first)
        v2 = y2[:, :4]
        del y1, y2
        y3 = conv(x1)  # only a view of the kept buffer is held: still not overwritten
        assert v2.data_ptr() != y3.data_ptr()
        assert torch.allclose(y3, first, atol=1e-6, rtol=1e-5)
        ptr = y3.data_ptr()
        del y3, v2
        assert conv(x2).data_ptr() == ptr  # released: the same buffer again
        seen = []
        h = conv.register_forward_hook(lambda m, a, out: seen.append(out))
        a, b = conv(x1), conv(x2)
        h.remove()
        assert a.data_ptr() != b.data_ptr() and torch.allclose(seen[0], first, atol=1e-6, rtol=1e-5)
        # the whole model: outputs of successive calls are independent, equal to the original's
        o1 = opt(torch.randn(2, 3, 64, 64))
        xs = torch.randn(2, 3, 64, 64)
        assert _rel_err(opt(xs), model(xs)) < 1e-4 and _rel_err(opt(xs), model(xs)) < 1e-4
        assert o1.data_ptr() != opt(xs).data_ptr()
        # a block's output (the project conv's kept buffer, residual added in place) held by a
        # hook on the block across calls keeps its values: the next call writes a new buffer
        held = {"opt": [], "ref": []}
        hooks = [m.stages[1][1].register_forward_hook(lambda mod, a, out, k=k: held[k].append(out))
                 for k, m in (("opt", opt), ("ref", model))]
        xa, xb = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
        for xi in (xa, xb, xa):
            opt(xi), model(xi)
        for h in hooks:
            h.remove()
        assert len({t.data_ptr() for t in held["opt"]}) == 3
        assert all(_rel_err(o, r) < 1e-4 for o, r in zip(held["opt"], held["ref"]))


def test_resnet_shortcut_conv_keeps_its_output_buffer(monkeypatch):
    """A ResNet projection shortcut's conv writes into the buffer it wrote last call (only the
    block's residual sum reads it), and the block's output still equals the original's."""
    from effnets import kernels
    if not kernels.pointwise_available():
        pytest.skip("the native GEMM needs the build on x86 AVX2")
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_faster", lambda a, b: False)  # ours chosen
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("resnet_rs_50", num_classes=10)).eval()
    opt = effnets.optimize(model)
    blocks = [b for b in opt.modules() if getattr(b, "shortcut", None) is not None]
    assert len(blocks) == 4 and all(b.shortcut.conv.reuse_output for b in blocks)
    conv = blocks[0].shortcut.conv
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x)
        opt(x)
        ptr = conv._out.data_ptr()
        for _ in range(2):
            assert _rel_err(opt(x), ref) < 1e-4
            assert conv._out.data_ptr() == ptr


def test_release_buffers_drops_the_kept_outputs():
    from effnets import kernels
    from effnets.optimize import release_buffers
    if kernels.library() is None:
        pytest.skip("native kernels unavailable")
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("efficientnet_b0", num_classes=10)).eval()
    opt = effnets.optimize(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        ref = opt(x).clone()
        kept = [m for m in opt.modules() if isinstance(m, FusedConvAct) and m._out is not None]
        expected = sum(m._out.numel() * 4 for m in kept)
        assert kept and all(m.reuse_output for m in kept)
        assert release_buffers(opt) == expected > 0
        assert not any(getattr(m, "_out", None) is not None for m in opt.modules())
        assert release_buffers(opt) == 0
        assert torch.allclose(opt(x), ref, atol=1e-6, rtol=1e-5)  # allocated again, same outputs


def test_native_convs_reject_inputs_with_the_wrong_channel_count(monkeypatch):
    """The optimized 1x1 and depthwise convs skip the kernels' per-call checks once the layer's
    shapes are known (a 1x1 conv only for an input shape it has already run), but an input with
    the wrong number of channels still gets an error instead of reading past its end."""
    from effnets import kernels
    if not kernels.pointwise_available():
        pytest.skip("the native GEMM needs the build on x86 AVX2")
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_faster", lambda a, b: False)  # ours chosen
    opt = effnets.optimize(effnets.create_model("efficientnet_b0", num_classes=10).eval())
    block = opt.stages[1][0]
    with torch.inference_mode():
        assert block.conv_pw(torch.randn(1, 16, 8, 8)).shape == (1, 96, 8, 8)
        with pytest.raises((ValueError, RuntimeError)):  # a new shape: oneDNN's weight packing refuses it
            block.conv_pw(torch.randn(1, 17, 8, 8))
        assert block.conv_dw(torch.randn(1, 96, 8, 8)).shape == (1, 96, 4, 4)
        with pytest.raises(ValueError, match="taps must be"):
            block.conv_dw(torch.randn(1, 95, 8, 8))


@pytest.mark.skipif(not effnets.kernels.pointwise_available(), reason="the native GEMM needs the build on x86 AVX2")
def test_fast_linear_runs_the_gemm_where_it_can_and_f_linear_elsewhere(monkeypatch, tmp_path):
    """optimize() turns nn.Linear into FastLinear (same parameter names): a float32 CPU input in
    eager inference, 2-D or (B, T, C), runs effnets' GEMM (its rows the GEMM's pixels), equal
    to F.linear up to float rounding, with or without bias; autograd inputs and the plain
    (export) path run F.linear; weights loaded in place afterwards drop the kernel's panels;
    pickles rebuild them."""
    from effnets import kernels as K
    from effnets.optimize import FastLinear
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 37), nn.ReLU(), nn.Linear(37, 10, bias=False)).eval()
    opt = effnets.optimize(net)
    assert [type(m) for m in opt] == [FastLinear, nn.ReLU, FastLinear]
    assert set(opt.state_dict()) == set(net.state_dict())
    calls = record_calls(monkeypatch, K, "pointwise_into", lambda x, *a, **kw: tuple(x.shape))
    for n in (1, 3, 13):
        x = torch.randn(n, 40)
        ref = net.double()(x.double()).float()
        net.float()
        with torch.inference_mode():
            y = opt(x)
        assert y.shape == (n, 10) and _rel_err(y, ref) < 1e-5
    assert calls == [(n, k, 1, 1) for n in (1, 3, 13) for k in (40, 37)]  # both layers, every batch
    calls.clear()
    x3 = torch.randn(2, 5, 40)
    with torch.inference_mode():
        y3 = opt[0](x3)
    assert y3.shape == (2, 5, 37) and _rel_err(y3, nn.functional.linear(x3.double(), opt[0].weight.double(),
                                                                          opt[0].bias.double())) < 1e-5
    assert calls == [(10, 40, 1, 1)]  # the 2 x 5 rows in one GEMM
    calls.clear()
    xg = torch.randn(4, 40, requires_grad=True)
    assert torch.equal(opt[0](xg), nn.functional.linear(xg, opt[0].weight, opt[0].bias))
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_plain_mode", lambda: True)
    x = torch.randn(4, 40)
    with torch.inference_mode():
        plain = opt(x)
    monkeypatch.undo()
    assert calls == []  # none of the above reached the kernel
    with torch.inference_mode():
        assert _rel_err(opt(x), plain) < 1e-5
    other = nn.Sequential(nn.Linear(40, 37), nn.ReLU(), nn.Linear(37, 10, bias=False)).eval()
    with torch.no_grad():
        opt.load_state_dict(other.state_dict())
    with torch.inference_mode():
        got, want = opt(x), other(x)
    assert _rel_err(got, want) < 1e-5 and _rel_err(want, plain) > 1e-2  # new weights, not stale panels
    path = tmp_path / "opt.pt"
    torch.save(opt, path)
    loaded = torch.load(path, weights_only=False)
    assert loaded[0]._panels is None
    with torch.inference_mode():
        assert torch.equal(loaded(x), got)


@pytest.mark.skipif(not effnets.kernels.pointwise_available(), reason="the native GEMM needs the build on x86 AVX2")
def test_transformer_mlp_gelu_runs_in_the_linear_epilogue(monkeypatch):
    """A block whose class declares ``linear_act`` (the ViT and CoAtNet MLPs: fc1 -> GELU) has
    that activation moved into fc1's GEMM epilogue by optimize(): fc1 carries act "gelu", the
    block's act becomes Identity, the state dict keeps its names, and the model's output equals
    the original's (eager on the kernel and in the plain path, which applies F.gelu after
    F.linear).  The tanh GELU (no kernel form) and an MLP class without the declaration stay
    as they were."""
    from effnets.nets.vit import Mlp
    from effnets.optimize import FastLinear
    torch.manual_seed(0)
    model = effnets.create_model("vit_tiny_16", num_classes=10).eval()
    opt = effnets.optimize(model)
    mlps = [m for m in opt.modules() if type(m) is Mlp]
    assert len(mlps) == 12 and all(m.fc1.act_name == "gelu" and type(m.act) is nn.Identity for m in mlps)
    assert all(m.fc2.act_name == "identity" for m in mlps)
    assert set(opt.state_dict()) == set(model.state_dict())
    calls = record_calls(monkeypatch, effnets.kernels, "pointwise_into", lambda *a, **kw: a[4])
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        want, got = model(x), opt(x)
    assert calls.count(effnets.kernels.DW_ACT_CODES["gelu"]) == 12  # every fc1, with its GELU
    assert _rel_err(got, want) < 1e-4
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_plain_mode", lambda: True)
    with torch.inference_mode():
        assert _rel_err(opt(x), want) < 1e-4
    monkeypatch.undo()

    class TanhMlp(Mlp):
        def __init__(self):
            super().__init__(8, 16)
            self.act = nn.GELU(approximate="tanh")

    class Undeclared(nn.Module):  # the same layers, no linear_act: nothing tells their order
        def __init__(self):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)

        def forward(self, x):
            return self.fc2(self.act(self.fc1(x)))

    for block in (TanhMlp().eval(), Undeclared().eval()):
        o = effnets.optimize(block)
        assert type(o.fc1) is FastLinear and o.fc1.act_name == "identity" and type(o.act) is nn.GELU
        xb = torch.randn(3, 5, 8)
        with torch.inference_mode():
            assert _rel_err(o(xb), block(xb)) < 1e-5


@pytest.mark.skipif(not effnets.kernels.pointwise_available(), reason="the native kernels need the build on x86 AVX2")
def test_exact_gelu_convs_run_on_the_native_kernels_and_tanh_gelu_does_not():
    """CoAtNet's conv stages (exact GELU) run their depthwise and 1x1 convs with GELU in the
    native kernels' epilogues (dw_act / pw_act "gelu"), and the optimized model equals the
    original; a conv followed by the tanh GELU keeps oneDNN's post-op (no native form)."""
    torch.manual_seed(0)
    model = _perturb_bn(effnets.create_model("coatnet_0", num_classes=10, img_size=64)).eval()
    opt = effnets.optimize(model)
    convs = [m for m in opt.modules() if isinstance(m, FusedConvAct) and m.attr == "gelu"]
    assert convs and all(m.dw_act == "gelu" or m.pw_act == "gelu" or m.cv_act == "gelu" or m.wino_act == "gelu"
                         for m in convs)
    assert any(m.dw_act == "gelu" for m in convs) and any(m.pw_act == "gelu" for m in convs)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert _rel_err(opt(x), model(x)) < 1e-4
    from effnets.layers import ConvNormAct
    for groups, k in ((8, 3), (1, 1)):  # a depthwise conv and a 1x1 conv, each + BN + tanh GELU
        block = _perturb_bn(nn.Sequential(ConvNormAct(8, 8, k, groups=groups, act="gelu_tanh"))).eval()
        conv = effnets.optimize(block)[0]
        assert isinstance(conv, FusedConvAct) and conv.algorithm == "tanh"
        assert conv.dw_act is None and conv.pw_act is None and conv.cv_act is None
        xb = torch.randn(2, 8, 6, 6)
        with torch.inference_mode():
            assert _rel_err(conv(xb), block(xb)) < 1e-5


def test_every_module_of_an_optimized_model_is_in_eval_mode():
    """The modules optimize() makes (FusedConvAct, FastSqueezeExcite, FastLinear) start in
    training mode like any new nn.Module; the optimized model is eval throughout, so code that
    asks a module's ``training`` (memory-efficient training layers, drop-path) sees inference."""
    model = effnets.create_model("efficientnet_b0", num_classes=10).eval()
    for opt in (effnets.optimize(model), effnets.optimize(model, dtype="int8_dynamic")):
        assert [n for n, m in opt.named_modules() if m.training] == []


def test_page_fault_cost_is_measured_on_this_machine(monkeypatch):
    """The cost per fault _count_faults charges: fresh anonymous pages (40 MiB) filled against
    the same pages filled again, over the faults counted; positive (pages really fault in) and
    below 1 ms (a per-page cost, not a whole fill: at most a 2 MiB huge page zeroed)."""
    opt = sys.modules["effnets.optimize"]
    monkeypatch.setattr(opt, "_FAULT_COST", [])
    assert 0 < opt._page_fault_cost() < 1e-3


def test_page_fault_cost_survives_a_preempted_fill(monkeypatch):
    """One warm fill slowed by the scheduler (20 ms, longer than any fresh fill) must not cancel
    the faults' cost: the fastest fresh fill less the fastest warm fill, each taken apart
    (CI once measured 0 here when the minimum of per-round differences was taken)."""
    opt = sys.modules["effnets.optimize"]
    steps = iter([10e-3, 1.5e-3, 10e-3, 20e-3] + [10e-3, 1.5e-3] * 3)  # fresh, warm per round
    clock = [0.0, 0]

    def perf_counter():  # three reads per round: before, between and after the two fills
        clock[1] += 1
        if clock[1] % 3 != 1:
            clock[0] += next(steps)
        return clock[0]

    monkeypatch.setattr(opt, "time", types.SimpleNamespace(perf_counter=perf_counter))
    monkeypatch.setattr(opt, "resource", None)  # no fault counts: one fault per 4 KiB page
    monkeypatch.setattr(opt, "_FAULT_COST", [])
    assert opt._page_fault_cost() == pytest.approx((10e-3 - 1.5e-3) / ((40 << 20) // 4096), rel=1e-9)


RESIDUAL_CASES = [("efficientnet_b0", None), ("efficientnetv2_b0", None), ("mobilenet_v2", None),
                  ("efficientnet_b0", "int8_dynamic"), ("efficientnet_b0", "bf16_mixed")]


@pytest.mark.parametrize("name,dtype", RESIDUAL_CASES)
def test_residual_sum_in_the_last_convs_epilogue(monkeypatch, name, dtype):
    """Each MBConv / Fused-MBConv block with a skip adds its shortcut in its last 1x1 conv's GEMM
    epilogue (``residual_in_branch``, ``FusedConvAct.forward_residual``): one GEMM call with a
    residual per such block and no other; the output equals, bit for bit, that of the same model
    with the sums in their own pass (the flags off), and the original's; on oneDNN's side
    (forced) the sum is its own pass again; a hook on a last conv sees its output without the
    sum; in training mode the block adds the shortcut itself (its drop path is live)."""
    from effnets import kernels
    from effnets.blocks.mbconv import FusedMBConv, MBConv
    if dtype == "bf16_mixed" and not kernels.bf16_fast():
        pytest.skip("this CPU has no AVX512-BF16")
    opt_mod = sys.modules["effnets.optimize"]
    into = {None: "pointwise_into", "int8_dynamic": "pointwise_q8_into", "bf16_mixed": "pointwise_bf16_into"}[dtype]
    calls = record_calls(monkeypatch, kernels, into, lambda *a, **kw: kw.get("residual") is not None)
    model, x = _model_and_input(name, 96)
    skips = [n for n, m in model.named_modules() if type(m) in (MBConv, FusedMBConv) and m.has_skip
             and m.conv_pwl is not None]
    assert skips
    with torch.inference_mode():
        ref = model(x)
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b, **kw: False)  # effnets' kernels everywhere
        fused, apart = effnets.optimize(model, dtype=dtype), effnets.optimize(model, dtype=dtype)
        assert sorted(n for n, m in fused.named_modules() if getattr(m, "residual_in_branch", False)) == sorted(skips)
        for m in apart.modules():
            if getattr(m, "residual_in_branch", False):
                m.residual_in_branch = False
        fused(x), apart(x)  # first calls time (stubbed) and choose
        calls.clear()
        y = fused(x).clone()
        assert sum(calls) == len(skips)
        calls.clear()
        assert torch.equal(apart(x), y) and sum(calls) == 0
        assert _rel_err(y, ref) < (1e-4 if dtype is None else 5e-2)
        seen = []  # a hook on a last conv: it is called as a module and sees the conv alone (its squeeze-
        # excite unfolded too, so the float roundings differ a little)
        fused.get_submodule(skips[0] + ".conv_pwl").register_forward_hook(lambda m, a, o: seen.append(o.clone()))
        calls.clear()
        assert _rel_err(fused(x), y) < 1e-5 and sum(calls) == len(skips) - 1 and len(seen) == 1
        block_in = {}
        fused.get_submodule(skips[0]).register_forward_pre_hook(lambda m, a: block_in.update(x=a[0].clone()))
        fused(x)
        assert torch.equal(seen[-1] + block_in["x"], fused.get_submodule(skips[0])(block_in["x"]))
    if dtype is None:
        monkeypatch.setattr(opt_mod, "_faster", lambda a, b, **kw: True)  # oneDNN faster everywhere
        with torch.inference_mode():
            onednn = effnets.optimize(model)
            onednn(x)
            calls.clear()
            assert _rel_err(onednn(x), ref) < 1e-4 and sum(calls) == 0
        residual_calls = record_calls(monkeypatch, opt_mod.FusedConvAct, "forward_residual")
        with torch.inference_mode():
            train = effnets.optimize(model).train()  # drop path live in training: the block's own sum
            for b in train.modules():
                if hasattr(b, "set_drop_path"):
                    b.set_drop_path(0.0)  # (p = 0 so that the features compare; dropout: not compared)
            feats = train.stages(train.stem(x))
            assert _rel_err(feats, model.stages(model.stem(x))) < 1e-4 and not residual_calls
