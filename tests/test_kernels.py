"""Native kernels (effnets.kernels) against float64 PyTorch, and the pure-PyTorch fallback."""
import copy
import sys

import pytest
import torch
import torch.nn.functional as F

import effnets
from conftest import record_calls
from effnets import kernels as K
from effnets.layers import memory as M

native = pytest.mark.skipif(K.library() is None, reason=f"native kernels unavailable: {K.why_unavailable}")

ACTS = {"silu": F.silu, "identity": lambda t: t, "relu": F.relu, "relu6": F.relu6, "hardswish": F.hardswish,
        "gelu": F.gelu}


def _rel(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


def _reference(y, w, b, eps, act, g):
    """Training BN + act and its gradients in float64 (the oracle)."""
    yr, wr, br = (t.detach().double().requires_grad_() for t in (y, w, b))
    rm, rv = torch.zeros(y.shape[1], dtype=torch.float64), torch.ones(y.shape[1], dtype=torch.float64)
    out = ACTS[act](F.batch_norm(yr, rm, rv, wr, br, True, 0.1, eps))
    out.backward(g.double())
    return out.detach(), yr.grad, wr.grad, br.grad, rm, rv


@native
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("shape", [(4, 40, 28, 28), (3, 13, 5, 7), (2, 1152, 7, 7)])
@pytest.mark.parametrize("act", ["silu", "identity", "relu", "relu6", "hardswish", "gelu"])
def test_bn_act_matches_float64(channels_last, shape, act):
    torch.manual_seed(0)
    y = torch.randn(*shape) * 2 + 0.5
    if channels_last:
        y = y.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    if act == "relu":  # keep BN outputs away from the kink, where float rounding flips the derivative
        b = b + torch.sign(b) * 0.5
    g = torch.randn(*shape)
    rm, rv = torch.zeros(c), torch.ones(c)
    out, mean, invstd = K.bn_act_forward(y, w, b, rm, rv, 0.1, 1e-3, act)
    dx, dw, db = K.bn_act_backward(g, y, w, b, mean, invstd, act)
    ref, rdx, rdw, rdb, rrm, rrv = _reference(y, w, b, 1e-3, act, g)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last or shape[2:] == (1, 1)
    tol = 2e-6 if act not in ("relu", "relu6") else 1e-5
    assert _rel(out, ref) < tol
    assert _rel(rm, rrm) < 1e-6 and _rel(rv, rrv) < 1e-6  # running stats: momentum, unbiased variance
    assert _rel(dx, rdx) < 1e-5 and _rel(dw, rdw) < 1e-5 and _rel(db, rdb) < 1e-5


@native
@pytest.mark.parametrize("act,aten_bwd", [
    ("relu6", lambda g, z: torch.ops.aten.hardtanh_backward(g, z, 0.0, 6.0)),
    ("hardswish", lambda g, z: torch.ops.aten.hardswish_backward(g, z))])
def test_bn_act_backward_takes_atens_derivative_at_the_kinks(act, aten_bwd):
    """The training kernels' ReLU6 and hard-swish derivatives at and next to their kinks (0 and
    6; -3 and 3) are aten's (hardtanh_backward: 0 at both kinks; hardswish_backward: 0 at -3, 1
    at 3).  A zero BN weight makes each channel's pre-activation exactly its bias, so the bias
    gradient is the channel's summed output gradient times the derivative at that bias."""
    kinks = torch.tensor([-3.0, 3.0, 0.0, 6.0, -3.0001, 2.9999, 3.0001, 5.9999, 1e-6, -1e-6, 0.5, -7.0])
    c = len(kinks)
    torch.manual_seed(0)
    for shape in ((2, c, 5, 7), (3, c, 1, 1)):  # per-plane and per-row (channels-last) layouts
        y, g = torch.randn(*shape), torch.randn(*shape)
        w, rm, rv = torch.zeros(c), torch.zeros(c), torch.ones(c)
        out, mean, invstd = K.bn_act_forward(y, w, kinks.clone(), rm, rv, 0.1, 1e-5, act)
        _, _, db = K.bn_act_backward(g, y, w, kinks.clone(), mean, invstd, act)
        want = g.double().sum((0, 2, 3)) * aten_bwd(torch.ones(c, dtype=torch.float64), kinks.double())
        assert torch.allclose(db.double(), want, rtol=1e-5, atol=1e-6), (db, want)


@native
@pytest.mark.parametrize("n", [1, 7, 8, 1000, 4099])  # the scalar tail alone, a whole vector, thread shares
def test_gelu_forward_and_backward_passes_match_float64(n):
    """act_out(x, "gelu") and gelu_backward(g, h) (GELU' and, optionally, GELU in one pass: what
    the memory-efficient transformer MLP runs) against float64's exact GELU and its autograd
    derivative, over [-10, 10] and the far tails; other dtypes and layouts are left to PyTorch."""
    torch.manual_seed(0)
    h = torch.cat([torch.linspace(-10, 10, n), torch.tensor([-40.0, 40.0, 0.0])])
    g = torch.randn_like(h)
    h64 = h.double().requires_grad_()
    ref = F.gelu(h64)
    (dref,) = torch.autograd.grad(ref, h64, g.double())
    scale = h.abs().clamp(min=1).double()
    assert ((K.act_out(h, "gelu").double() - ref.detach()).abs() / scale).max() < 3e-7
    dh, a = K.gelu_backward(g, h, True)
    assert ((dh.double() - dref).abs() / g.abs().double().clamp(min=1)).max() < 1e-6
    assert torch.equal(a, K.act_out(h, "gelu"))
    dh2, none = K.gelu_backward(g, h, False)
    assert none is None and torch.equal(dh2, dh)
    assert K.act_out(h.double(), "gelu") is None and K.gelu_backward(g, h[:-1], True) is None
    assert K.act_out(h.view(-1, 1).expand(-1, 2), "gelu") is None  # not contiguous


@native
def test_silu_inplace_matches_float64_over_the_whole_range():
    x = torch.cat([torch.linspace(-100, 100, 20001), torch.randn(10007) * 5, torch.tensor([0.0, -0.0, 1e-30])])
    ref = F.silu(x.double())
    y = K.silu_(x.clone())
    big = ref.abs() > 1e-30
    assert ((y.double() - ref).abs()[big] / ref.abs()[big]).max() < 1e-6
    assert ((y.double() - ref).abs()[~big]).max() < 1e-30  # tails (z < -70): tiny either way
    t = torch.randn(2, 24, 9, 9).contiguous(memory_format=torch.channels_last)
    assert K.silu_(t.clone()).allclose(F.silu(t), rtol=1e-6, atol=1e-7)


def test_silu_inplace_falls_back_for_other_dtypes():
    x = torch.randn(100, dtype=torch.float64)
    assert torch.equal(K.silu_(x.clone()), F.silu(x))


@native
def test_module_gradients_native_equal_plain(monkeypatch):
    """The memory-efficient ConvNormAct with native kernels gives the gradients of the plain
    modules (float64 reference through the same model)."""
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)

    def run(m, dtype, me):
        m = copy.deepcopy(m).to(dtype)
        torch.manual_seed(1)  # same drop-path and dropout masks
        with M.memory_efficient(me):
            m(x.to(dtype)).logsumexp(1).sum().backward()
        return {k: p.grad for k, p in m.named_parameters()}

    g64 = run(model, torch.float64, False)
    g32 = run(model, torch.float32, True)
    scale = max(g.abs().max() for g in g64.values())
    worst = max(((g32[k].double() - g64[k]).abs().max() / scale).item() for k in g64)
    assert worst < 1e-4, worst


def test_fallback_without_compiler(monkeypatch, tmp_path):
    """No compiler: library() is None with the reason, and training still runs (plain ops)."""
    monkeypatch.setattr(K, "_TRIED", False)
    monkeypatch.setattr(K, "_LIB", None)
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    monkeypatch.setenv("EFFNETS_CACHE", str(tmp_path))
    assert K.library() is None
    assert "no-such-compiler-xyz" in K.why_unavailable
    assert not K.supports(torch.zeros(1, 2, 3, 3), "silu")
    torch.manual_seed(0)
    m = effnets.create_model("efficientnet_b0", num_classes=4).train()
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(K, "_TRIED", False)
    monkeypatch.setattr(K, "_LIB", None)
    monkeypatch.setenv("EFFNETS_NO_NATIVE", "1")
    assert K.library() is None and "EFFNETS_NO_NATIVE" in K.why_unavailable


def test_gated_conv_gradcheck():
    """conv(x * gate(s)) that recomputes the gated tensor: exact gradients (float64 gradcheck)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, 1, 1, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for kind in ("sigmoid", "hard_sigmoid"):
        f = lambda x, s, w, b: M._GatedConv.apply(x, s, w, b, (1, 1), (0, 0), (1, 1), 1, kind)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x, s, w, b))
        gate = torch.sigmoid(s) if kind == "sigmoid" else F.hardsigmoid(s)
        assert torch.allclose(f(x, s, w, b), F.conv2d(x * gate, w, b))


@native
@pytest.mark.parametrize("n,c,h,w", [(2, 13, 9, 11), (3, 96, 56, 56), (1, 1152, 7, 7), (2, 40, 1, 1)])
def test_gate_backward_matches_float64(n, c, h, w):
    """Backward of x * gate in one pass: dx = dy * gate, and the per-image channel sums of dy * x
    (odd channel counts take the scalar tail; 56x56 spans many row chunks)."""
    torch.manual_seed(0)
    dy = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    x = torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)
    g = torch.rand(n, c, 1, 1)
    ref_dx = dy.double() * g.double()
    ref_dg = (dy.double() * x.double()).sum((2, 3))
    dx, dg = K.gate_backward(dy, x, g)
    assert dx.is_contiguous(memory_format=torch.channels_last) and dg.shape == (n, c)
    assert (dx.double() - ref_dx).abs().max() <= 1e-6 * ref_dx.abs().max()
    assert (dg.double() - ref_dg).abs().max() <= 1e-5 * ref_dg.abs().max()
    dx2, dg2 = K.gate_backward(dy, x, g.view(n, c), out=dy)  # in place on dy
    assert dx2.data_ptr() == dy.data_ptr()
    assert torch.equal(dy, dx) and torch.equal(dg2, dg)


@native
def test_gate_backward_rejects_what_it_cannot_read():
    cl = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="channels-last"):
        K.gate_backward(torch.randn(2, 8, 4, 4), cl, torch.rand(2, 8))  # NCHW dy
    with pytest.raises(ValueError, match="one value per image and channel"):
        K.gate_backward(cl, cl, torch.rand(2, 7))
    with pytest.raises(ValueError, match="out must be"):
        K.gate_backward(cl, cl, torch.rand(2, 8), out=torch.empty(2, 8, 4, 4))


@native
def test_gated_conv_native_backward_matches_plain_ops(monkeypatch):
    """_GatedConv's backward on the native gate kernel (in place on its own conv gradient) gives
    the PyTorch ops' gradients, and the native kernel really ran."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    s = torch.randn(2, 16, 1, 1, requires_grad=True)
    w = (torch.randn(8, 16, 1, 1) * 0.1).contiguous(memory_format=torch.channels_last).requires_grad_()
    go = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)

    def grads():
        y = M._GatedConv.apply(x, s, w, None, (1, 1), (0, 0), (1, 1), 1, "sigmoid")
        return torch.autograd.grad(y, (x, s, w), go)

    calls = record_calls(monkeypatch, K, "gate_backward")
    native = grads()
    assert len(calls) == 1
    monkeypatch.setattr(K, "supports_gate_backward", lambda *a: False)
    plain = grads()
    for a, b in zip(native, plain):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    # only the weight needs a gradient (frozen SE, input without grad): no gate pass at all
    y = M._GatedConv.apply(x.detach(), s.detach(), w, None, (1, 1), (0, 0), (1, 1), 1, "sigmoid")
    (gw,) = torch.autograd.grad(y, (w,), go)
    assert (gw - plain[2]).abs().max() <= 1e-5 * plain[2].abs().max()


def test_channel_mean_gradient_is_a_broadcast_view():
    """The SE's pooled mean in memory-efficient training: exact gradient (float64 gradcheck),
    handed back as a stride-0 view instead of a full-size tensor."""
    x = torch.randn(2, 5, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(M.channel_mean, (x,))
    y = M.channel_mean(x)
    assert torch.allclose(y, x.mean((2, 3), keepdim=True))
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert gx.stride()[2:] == (0, 0) and torch.allclose(gx, torch.full_like(x, 1 / 12))


def test_se_conv_saves_less_than_se_then_conv(monkeypatch):
    """The gated tensor is not kept for backward in memory-efficient training."""
    import effnets.blocks.mbconv as mb
    from effnets.profiling import saved_activation_bytes
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    with M.memory_efficient(True):
        lean = saved_activation_bytes(model, x)
        monkeypatch.setattr(mb, "se_conv", lambda x, se, cna, shortcut=None: cna(x if se is None else se(x)))
        without = saved_activation_bytes(model, x)
    assert lean < 0.9 * without, (lean, without)


@native
@pytest.mark.parametrize("n,c,h,w,k,stride,pad", [
    (2, 13, 9, 11, 3, 1, (1, 1)),    # odd channels (scalar tail), non-square map
    (2, 40, 10, 10, 5, 2, (2, 2)),   # 5x5 stride 2 (EfficientNet's reduction blocks)
    (1, 96, 17, 16, 3, 2, (1, 1)),   # odd size, 32-channel blocks
    (3, 8, 7, 7, 5, 1, (2, 1)),      # unequal padding
    (2, 33, 8, 9, 3, 2, (0, 0)),     # no padding
])
@pytest.mark.parametrize("channels_last", [True, False])
def test_depthwise_backward_matches_float64(n, c, h, w, k, stride, pad, channels_last):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w)
    wt = torch.randn(c, 1, k, k)
    xr, wr = x.double().requires_grad_(), wt.double().requires_grad_()
    y = F.conv2d(xr, wr, None, stride, pad, 1, c)
    dy = torch.randn_like(y)
    y.backward(dy)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dx, dw = K.depthwise_backward(dy.float().contiguous(memory_format=fmt), x.contiguous(memory_format=fmt), wt,
                                  stride, pad)
    assert dx.shape == x.shape and dw.shape == wt.shape
    assert _rel(dx, xr.grad) < 1e-5 and _rel(dw, wr.grad) < 1e-5


@native
def test_training_depthwise_convs_use_native_backward(monkeypatch):
    """In memory-efficient training every depthwise ConvNormAct of B0 runs the native backward,
    and parameter gradients match the plain modules'."""
    calls = record_calls(monkeypatch, K, "depthwise_backward")
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for me in (True, False):
        m = copy.deepcopy(model)
        torch.manual_seed(1)
        with M.memory_efficient(me):
            m(x).logsumexp(1).sum().backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    n_dw = sum(1 for mod in model.modules() if isinstance(mod, torch.nn.Conv2d) and mod.groups > 1)
    assert len(calls) == n_dw == 16
    scale = max(g.abs().max() for g in grads[1].values())
    worst = max(((grads[0][k] - g).abs().max() / scale).item() for k, g in grads[1].items())
    assert worst < 1e-4, worst  # float32 both ways: rounding only


_ACTS64 = {"identity": lambda z: z, "silu": F.silu, "relu": F.relu, "hardswish": F.hardswish,
           "relu6": lambda z: z.clamp(0, 6), "gelu": F.gelu}  # float64 F.gelu: the exact erf


@native
@pytest.mark.parametrize("n,c,h,w,k,stride,pad", [
    (2, 13, 9, 11, 3, 1, (1, 1)),    # odd channels (scalar tail), non-square map
    (2, 40, 10, 10, 5, 2, (2, 2)),   # 5x5 stride 2; 40 = 16 + 16 + 8 channels
    (1, 96, 17, 16, 3, 2, (1, 1)),   # odd size
    (3, 8, 7, 7, 5, 1, (2, 1)),      # unequal padding, a row too short for the 4-pixel blocks
    (2, 33, 8, 9, 3, 2, (0, 0)),     # no padding
    (1, 24, 20, 23, 5, 1, (2, 2)),   # interior blocks of 4 pixels plus leftovers
])
@pytest.mark.parametrize("act", sorted(_ACTS64))
def test_depthwise_forward_matches_float64(n, c, h, w, k, stride, pad, act, isa):
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w) * 3  # spans hard-swish's and ReLU6's kinks
    wt, b = torch.randn(c, 1, k, k), torch.randn(c)
    ref = _ACTS64[act](F.conv2d(x.double(), wt.double(), b.double(), stride, pad, 1, c))
    y, sums = K.depthwise_forward(x, K.depthwise_taps(wt), b, stride, pad, act, channel_sums=True)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, ref) < 1e-5
    assert _rel(sums, ref.sum((2, 3))) < 1e-5
    y2, none = K.depthwise_forward(x, K.depthwise_taps(wt), None, stride, pad, act)
    assert none is None and _rel(y2, _ACTS64[act](F.conv2d(x.double(), wt.double(), None, stride, pad, 1, c))) < 1e-5


@native
@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large"])
def test_optimized_depthwise_convs_run_native_and_feed_squeeze_excite(monkeypatch, name):
    """Every depthwise conv of the optimized model runs the native kernel (its timed choice against
    oneDNN forced by stubbing the timing); those followed by a squeeze-excite hand it their
    channel sums, the squeeze-excite runs natively (in place, or its gates folded into the
    project conv's GEMM), and the outputs still equal the original's."""
    monkeypatch.setattr(sys.modules["effnets.optimize"], "_faster", lambda a, b: False)  # never oneDNN
    calls = record_calls(monkeypatch, K, "depthwise_into", lambda *a, **kw: a[4] is not None)  # sums asked for
    # blocks whose expand conv runs in the same pass (forward_expanded)
    fused = record_calls(monkeypatch, K, "expand_depthwise_into", lambda *a, **kw: a[7] is not None)
    se_calls = record_calls(monkeypatch, K, "se_gate_")
    folded = record_calls(monkeypatch, K, "se_gates_into")
    gated_gemm = record_calls(monkeypatch, K, "pointwise_into", lambda *a, **kw: kw.get("gate") is not None)
    torch.manual_seed(0)
    model = effnets.create_model(name).eval()
    opt = effnets.optimize(model)
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        opt(x)  # the first call also times the choices
        for rec in (calls, fused, se_calls, folded, gated_gemm):
            rec.clear()
        ref, out = model(x), opt(x)
    n_dw = sum(1 for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1)
    n_se = sum(1 for m in model.modules() if getattr(m, "se", None) is not None and hasattr(m, "conv_dw"))
    assert len(calls) + len(fused) == n_dw and sum(map(bool, calls + fused)) == n_se > 0 and fused
    # every squeeze-excite ran as one native call; folded gates feed a gated GEMM
    assert len(se_calls) + len(folded) == n_se and sum(map(bool, gated_gemm)) == len(folded)
    assert _rel(out, ref) < 1e-4


@native
def test_forward_hook_on_depthwise_conv_turns_channel_sums_off():
    """A hook that changes the depthwise output in place must not leave the squeeze-excite with
    sums of the unchanged output."""
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0").eval()
    opt = effnets.optimize(model)

    def double(module, args, out):
        out.mul_(2.0)
    model.get_submodule("stages.1.0.conv_dw").register_forward_hook(double)
    opt.get_submodule("stages.1.0.conv_dw").register_forward_hook(double)
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        assert _rel(opt(x), model(x)) < 1e-4


@native
def test_depthwise_forward_rejects_what_it_cannot_read():
    taps = K.depthwise_taps(torch.randn(4, 1, 3, 3))
    with pytest.raises(ValueError, match="float32 CPU"):
        K.depthwise_forward(torch.randn(1, 4, 8, 8, dtype=torch.float64), taps, None, 1, (1, 1))
    with pytest.raises(ValueError, match="K\\*K, C"):
        K.depthwise_forward(torch.randn(1, 5, 8, 8), taps, None, 1, (1, 1))


_SE64 = {"silu": F.silu, "relu": F.relu, "hardswish": F.hardswish, "sigmoid": torch.sigmoid,
         "hardsigmoid": F.hardsigmoid, "identity": lambda z: z}


@native
@pytest.mark.parametrize("n,c,r,hw", [(1, 40, 10, 7), (3, 19, 5, 4), (2, 1152, 48, 9)])
@pytest.mark.parametrize("act,gate", [("silu", "sigmoid"), ("relu", "hardsigmoid"), ("hardswish", "sigmoid")])
def test_se_gate_matches_float64(n, c, r, hw, act, gate):
    torch.manual_seed(0)
    x = (torch.randn(n, c, hw, hw) * 2).contiguous(memory_format=torch.channels_last)
    mean = x.mean((2, 3))
    w1, b1, w2, b2 = torch.randn(r, c) / c ** 0.5, torch.randn(r), torch.randn(c, r), torch.randn(c) * 3
    h = _SE64[act](mean.double() @ w1.double().t() + b1.double())
    ref = x.double() * _SE64[gate](h @ w2.double().t() + b2.double())[:, :, None, None]
    gates = K.se_gates(mean, w1, b1, w2, b2, act, gate)  # the gates alone, for a gated 1x1 conv
    g64 = _SE64[gate](h @ w2.double().t() + b2.double())
    assert gates.shape == (n, c) and _rel(gates, g64) < 1e-5
    # from the channel sums, 1 / (H * W) applied in the kernel, into a given buffer
    sums, buf = x.sum((2, 3)), torch.full((n, c), float("nan"))
    codes = K.SE_ACT_CODES[act], K.SE_ACT_CODES[gate]
    assert K.se_gates_into(sums, w1, b1, w2, b2, buf, *codes, mean_scale=1.0 / hw ** 2) is buf
    assert _rel(buf, g64) < 1e-5
    out = K.se_gate_(x.clone(), sums, w1, b1, w2, b2, act, gate, mean_scale=1.0 / hw ** 2)
    assert _rel(out, ref) < 1e-5
    out = K.se_gate_(x, mean, w1, b1, w2, b2, act, gate)
    assert out is x and _rel(out, ref) < 1e-5


@native
@pytest.mark.parametrize("n,c,r,hw", [(1, 64, 16, 10), (3, 19, 5, 9), (2, 256, 64, 5)])
@pytest.mark.parametrize("out_act", ["relu", "identity", "silu"])
def test_se_gate_with_residual_and_own_means_matches_float64(n, c, r, hw, out_act):
    """mean=None: the kernel pools; residual: x = out_act(x * gate + residual) in the same pass."""
    torch.manual_seed(0)
    x = (torch.randn(n, c, hw, hw) * 2).contiguous(memory_format=torch.channels_last)
    res = torch.randn(n, c, hw, hw).contiguous(memory_format=torch.channels_last)
    w1, b1, w2, b2 = torch.randn(r, c) / c ** 0.5, torch.randn(r), torch.randn(c, r), torch.randn(c) * 3
    mean = x.double().mean((2, 3))
    h = F.relu(mean @ w1.double().t() + b1.double())
    ref = _SE64[out_act](x.double() * torch.sigmoid(h @ w2.double().t() + b2.double())[:, :, None, None]
                         + res.double())
    out = K.se_gate_(x, None, w1, b1, w2, b2, "relu", "sigmoid", residual=res, out_act=out_act)
    assert out is x and _rel(out, ref) < 1e-5


def _subnormals(t: torch.Tensor) -> int:
    return int(((t != 0) & (t.abs() < torch.finfo(torch.float32).tiny)).sum())


@native
def test_gate_kernels_write_no_subnormal_values():
    """Gates of logits below -88 and gated values below FLT_MIN are written as 0 (on Intel CPUs a
    conv reading subnormal inputs takes microcode assists: a trained B0's project conv ran 15x
    slower); everything else still equals float64 to 1e-5."""
    torch.manual_seed(0)
    n, c, r, hw = 2, 24, 6, 5
    x = (torch.randn(n, c, hw, hw) * 2).contiguous(memory_format=torch.channels_last)
    x[:, :4] *= 1e-36  # normal values whose gated product is subnormal
    w1, b1, w2 = torch.randn(r, c) / c ** 0.5, torch.randn(r), torch.randn(c, r) * 0.1
    b2 = torch.zeros(c)
    b2[4:12] = -100.0  # sigmoid(-100) = 4e-44: a subnormal gate
    b2[:4] = -5.0
    mean = x.mean((2, 3))
    z = F.relu(mean.double() @ w1.double().t() + b1.double()) @ w2.double().t() + b2.double()
    ref = x.double() * torch.sigmoid(z)[:, :, None, None]
    gates = K.se_gates(mean, w1, b1, w2, b2, "relu", "sigmoid")
    assert _subnormals(torch.sigmoid(z).float()) > 0  # what PyTorch writes
    assert _subnormals(gates) == 0 and bool((gates[:, 4:12] == 0).all())
    assert _rel(gates, torch.sigmoid(z)) < 1e-5
    out = K.se_gate_(x.clone(), mean, w1, b1, w2, b2, "relu", "sigmoid")
    assert _subnormals(ref.float()) > 0 and _subnormals(out) == 0
    assert bool((out[:, 4:12] == 0).all()) and _rel(out, ref) < 1e-5
    res = torch.zeros_like(x)  # the residual pass flushes too
    assert _subnormals(K.se_gate_(x.clone(), mean, w1, b1, w2, b2, "relu", "sigmoid", residual=res)) == 0


@native
def test_se_gate_rejects_what_it_cannot_read():
    w1, b1, w2, b2 = torch.randn(2, 8), torch.randn(2), torch.randn(8, 2), torch.randn(8)
    with pytest.raises(ValueError, match="channels-last"):
        K.se_gate_(torch.randn(1, 8, 4, 4, dtype=torch.float64), torch.randn(1, 8), w1, b1, w2, b2, "relu", "sigmoid")
    with pytest.raises(ValueError, match="do not fit"):
        K.se_gate_(torch.randn(1, 9, 4, 4).contiguous(memory_format=torch.channels_last), torch.randn(1, 9),
                   w1, b1, w2, b2, "relu", "sigmoid")
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="residual"):
        K.se_gate_(x, None, w1, b1, w2, b2, "relu", "sigmoid", residual=torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="out_act"):
        K.se_gate_(x, None, w1, b1, w2, b2, "relu", "sigmoid", residual=x.clone(), out_act="mish")


wino = pytest.mark.skipif(not K.winograd_available(), reason="Winograd kernels need the native build on x86 AVX2")


@wino
@pytest.mark.parametrize("n,ci,co,h,w,pad,rounds", [
    (2, 8, 16, 9, 7, (1, 1), None),   # output 9x7: the last tiles overhang both edges
    (1, 16, 8, 4, 4, (1, 1), None),   # one tile
    (1, 8, 24, 6, 11, (0, 0), None),  # no padding (TF "same" pads before the conv)
    (3, 24, 32, 13, 13, (1, 1), 5),   # several rounds of 5 tiles, the last one short
    (1, 64, 64, 40, 40, (1, 1), None),
])
@pytest.mark.parametrize("act", ["identity", "silu", "relu", "relu6"])
def test_winograd_conv3x3_matches_float64(n, ci, co, h, w, pad, rounds, act):
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w), torch.randn(co, ci, 3, 3) / ci ** 0.5, torch.randn(co)
    ref = _ACTS64[act](F.conv2d(x.double(), wt.double(), b.double(), 1, pad))
    y = K.winograd_conv3x3(x, K.winograd_weight(wt), b, pad, act, tiles_per_round=rounds)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    # F(4x4, 3x3) in float32 loses a few bits to its transforms (entries up to 8); direct
    # float32 convolution here is ~5e-7, Winograd measured 2e-6 to 4e-6
    assert _rel(y, ref) < 2e-5
    y0 = K.winograd_conv3x3(x, K.winograd_weight(wt), None, pad, act)
    assert _rel(y0, _ACTS64[act](F.conv2d(x.double(), wt.double(), None, 1, pad))) < 2e-5



@wino
@pytest.mark.parametrize("n,ci,co,h,w,pad,block", [
    (2, 8, 16, 9, 7, (1, 1), None),   # the last tiles overhang both edges; one block of 12 (6 tiles)
    (1, 16, 8, 4, 4, (1, 1), None),   # one tile
    (1, 8, 24, 6, 11, (0, 0), None),  # no padding; 24 output channels: the last panel is half empty
    (3, 24, 40, 13, 13, (1, 1), 5),   # blocks of 5 tiles, the last one short, rows not a multiple of the GEMM tile
    (2, 64, 64, 40, 40, (1, 1), None),  # 200 tiles: blocks of 24 on the threads
    (1, 32, 48, 17, 9, (1, 1), 1),    # a tile per block
])
@pytest.mark.parametrize("act", ["identity", "silu", "relu", "relu6"])
def test_winograd_fused_matches_float64_and_the_bmm_route(n, ci, co, h, w, pad, block, act, isa):
    """The fused kernel (transforms and the 36 products per block of tiles) computes what
    winograd_conv3x3 computes: against float64 within Winograd's float32 bound, and against the
    bmm route within a few float32 roundings (only the order of the products' sums differs)."""
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w), torch.randn(co, ci, 3, 3) / ci ** 0.5, torch.randn(co)
    ref = _ACTS64[act](F.conv2d(x.double(), wt.double(), b.double(), 1, pad))
    u = K.winograd_weight(wt)
    y = K.winograd_conv3x3_fused(x, K.winograd_panels(u), b, pad, act, tiles_per_block=block)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, ref) < 2e-5
    # the products' sums in another order: float32 roundings of the transformed values, which run
    # up to ~10x the output's size (measured up to 2.1e-6 of the output's largest value)
    assert _rel(y, K.winograd_conv3x3(x, u, b, pad, act).double()) < 5e-6
    out = torch.full(ref.shape, float("nan")).contiguous(memory_format=torch.channels_last)
    assert K.winograd_conv3x3_fused(x, K.winograd_panels(u), b, pad, act, out=out) is out
    assert torch.equal(out, K.winograd_conv3x3_fused(x, K.winograd_panels(u), b, pad, act))



@wino
@pytest.mark.parametrize("act", ["silu", "relu6"])
def test_winograd_avx512_code_equals_avx2_code_bit_for_bit(act):
    """The transforms' 16-channel code (and the fused route's GEMM tiles) do the AVX2 code's
    arithmetic step for step: both Winograd routes give the same bits on either ISA (24 input
    and 40 output channels: 16-channel groups and an 8-channel rest on both sides)."""
    if not K.set_avx512(True):
        pytest.skip("this CPU has no AVX-512F")
    torch.manual_seed(0)
    x, wt, b = torch.randn(2, 24, 11, 9) * 2, torch.randn(40, 24, 3, 3) * 0.2, torch.randn(40)
    u = K.winograd_weight(wt)
    outs = []
    try:
        for on in (True, False):
            K.set_avx512(on)
            outs.append((K.winograd_conv3x3(x, u, b, (1, 1), act), K.winograd_conv3x3_fused(x, K.winograd_panels(u), b,
                                                                                             (1, 1), act)))
    finally:
        K.set_avx512(True)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])

@pytest.mark.skipif(not K.library(), reason="needs the C compiler the native build uses")
def test_the_library_builds_and_loads_without_its_x86_code(tmp_path, monkeypatch):
    """Off x86-64 (ARM servers, for one) native.c compiles without its x86 code, and every
    function _build declares for all builds must exist there: one declared unconditionally but
    defined only for x86 made loading fail on every other CPU."""
    text = open(K._SRC).read()
    guard = "#if defined(__x86_64__) || defined(_M_X64)\n"
    assert text.count(guard) == 1
    (tmp_path / "native.c").write_text(text.replace(guard, "#if 0\n"))
    monkeypatch.setenv("EFFNETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(K, "_SRC", str(tmp_path / "native.c"))
    lib = K._build()
    assert not hasattr(lib, "eff_wino_fused")  # the x86 code left out
    x = torch.randn(1000)
    y = torch.empty_like(x)
    lib.eff_act(x.data_ptr(), y.data_ptr(), x.numel(), K.ACT_CODES["silu"], 1)  # the portable code runs
    assert torch.allclose(y, F.silu(x), atol=1e-6)


@wino
def test_winograd_fused_streaming_stores_give_the_same_bits():
    """Large outputs leave the fused Winograd kernel by streaming stores (an eighth of the
    last-level cache, at least 2 MiB); the threshold lowered to 0, small outputs take that path
    and give the same bits as plain stores: whole 16-channel groups (streamed), 40 channels (not:
    an 8-channel rest) and an output that is not 64-byte aligned (not)."""
    lib = K.library()
    torch.manual_seed(0)
    default = lib.eff_wino_set_stream_bytes(1 << 62)
    assert default >= 2 << 20
    try:
        for co in (32, 48, 40):
            x, wt, b = torch.randn(2, 24, 13, 11), torch.randn(co, 24, 3, 3) * 0.2, torch.randn(co)
            p = K.winograd_panels(K.winograd_weight(wt))
            plain = K.winograd_conv3x3_fused(x, p, b, (1, 1), "silu")
            lib.eff_wino_set_stream_bytes(0)
            streamed = K.winograd_conv3x3_fused(x, p, b, (1, 1), "silu")
            base = torch.empty(plain.numel() + 16)  # a view 4 bytes past a 64-byte boundary
            shifted = base[1:1 + plain.numel()].view(2, 13, 11, co).permute(0, 3, 1, 2)
            K.winograd_conv3x3_fused(x, p, b, (1, 1), "silu", out=shifted)
            lib.eff_wino_set_stream_bytes(1 << 62)
            assert torch.equal(plain, streamed) and torch.equal(plain, shifted)
            assert _rel(plain, F.silu(F.conv2d(x.double(), wt.double(), b.double(), 1, 1))) < 2e-5
    finally:
        lib.eff_wino_set_stream_bytes(default)


@wino
def test_winograd_panels_hold_the_matrices():
    u = K.winograd_weight(torch.randn(24, 8, 3, 3))
    panels = K.winograd_panels(u)
    assert panels.shape == (36, 2, 8, 16)
    # panel q, column j = output channel 16 q + j; zero past the 24 channels
    assert torch.equal(panels.permute(0, 2, 1, 3).reshape(36, 8, 32)[:, :, :24], u)
    assert not panels.permute(0, 2, 1, 3).reshape(36, 8, 32)[:, :, 24:].any()


@wino
def test_winograd_fused_rejects_what_it_cannot_compute():
    u = K.winograd_weight(torch.randn(16, 8, 3, 3))
    panels, b = K.winograd_panels(u), torch.zeros(16)
    x = torch.randn(1, 8, 8, 8)
    with pytest.raises(ValueError, match="float32 CPU"):
        K.winograd_conv3x3_fused(x.double(), panels, b, (1, 1))
    with pytest.raises(ValueError, match="panels must be"):
        K.winograd_conv3x3_fused(torch.randn(1, 16, 8, 8), panels, b, (1, 1))
    with pytest.raises(ValueError, match="panels must be"):
        K.winograd_conv3x3_fused(x, u, b, (1, 1))
    with pytest.raises(ValueError, match="bias"):
        K.winograd_conv3x3_fused(x, panels, None, (1, 1))
    with pytest.raises(ValueError, match="bias"):
        K.winograd_conv3x3_fused(x, panels, torch.zeros(40), (1, 1))
    with pytest.raises(ValueError, match="no output"):
        K.winograd_conv3x3_fused(torch.randn(1, 8, 2, 2), panels, b, (0, 0))
    with pytest.raises(ValueError, match="act must be"):
        K.winograd_conv3x3_fused(x, panels, b, (1, 1), "mish")
    with pytest.raises(ValueError, match="tiles_per_block"):
        K.winograd_conv3x3_fused(x, panels, b, (1, 1), tiles_per_block=0)
    with pytest.raises(ValueError, match="winograd_panels needs"):
        K.winograd_panels(torch.randn(16, 8, 3, 3))

@wino
@pytest.mark.parametrize("n,ci,cm,co,h,w,block,residual", [
    (2, 16, 48, 16, 9, 7, None, True),    # the last tiles overhang both edges: those pixels are not stored
    (1, 8, 32, 24, 4, 4, None, False),    # one tile, no residual; 24 outputs: a half-empty last panel
    (3, 24, 96, 40, 13, 11, 5, True),     # blocks of 5 tiles (runs of 6 cross them), 40 outputs
    (2, 48, 192, 48, 23, 21, None, True),  # V2-S's stage-1 channels; rows past the last whole run of tiles
    (1, 16, 64, 8, 17, 9, 1, True),       # a tile per block, 8 outputs (the one-panel tile)
])
def test_winograd_pointwise_fused_equals_the_two_calls_bit_for_bit(n, ci, cm, co, h, w, block, residual, isa):
    """winograd_pointwise_fused (a Fused-MBConv's 3x3 expand conv by the fused Winograd kernel, its
    1x1 project conv and shortcut in one pass, the expanded tensor kept in the core's cache) does
    the two calls' arithmetic: the same bits as winograd_conv3x3_fused then pointwise_conv, and
    within float32 roundings of float64."""
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w), torch.randn(cm, ci, 3, 3) / ci ** 0.5, torch.randn(cm)
    w2, b2 = torch.randn(co, cm, 1, 1) / cm ** 0.5, torch.randn(co)
    res = torch.randn(n, co, h, w).contiguous(memory_format=torch.channels_last) if residual else None
    up, pw = K.winograd_panels(K.winograd_weight(wt)), K.pointwise_weight(w2)
    apart = K.pointwise_conv(K.winograd_conv3x3_fused(x, up, b, (1, 1), "silu", tiles_per_block=block), pw, b2, co,
                             residual=res)
    out = torch.full((n, co, h, w), float("nan")).contiguous(memory_format=torch.channels_last)
    y = K.winograd_pointwise_fused(x, up, b, "silu", pw, b2, out, residual=res, tiles_per_block=block)
    assert y is out and torch.equal(y, apart)
    ref = F.conv2d(F.silu(F.conv2d(x.double(), wt.double(), b.double(), 1, 1)), w2.double(), b2.double())
    assert _rel(y, ref + (res.double() if residual else 0)) < 2e-5


@wino
def test_winograd_pointwise_fused_rejects_what_it_cannot_compute():
    up, b = K.winograd_panels(K.winograd_weight(torch.randn(32, 8, 3, 3))), torch.zeros(32)
    pw, b2 = K.pointwise_weight(torch.randn(16, 32, 1, 1)), torch.zeros(16)
    x = torch.randn(1, 8, 8, 8)
    out = torch.empty(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="float32 CPU"):
        K.winograd_pointwise_fused(x.double(), up, b, "silu", pw, b2, out)
    with pytest.raises(ValueError, match="panels must be"):
        K.winograd_pointwise_fused(torch.randn(1, 16, 8, 8), up, b, "silu", pw, b2, out)
    with pytest.raises(ValueError, match="bias must be"):
        K.winograd_pointwise_fused(x, up, torch.zeros(40), "silu", pw, b2, out)
    with pytest.raises(ValueError, match="pw_panels must be"):
        K.winograd_pointwise_fused(x, up, b, "silu", K.pointwise_weight(torch.randn(16, 24, 1, 1)), b2, out)
    with pytest.raises(ValueError, match="pw_panels must be"):
        K.winograd_pointwise_fused(x, up, b, "silu", pw, torch.zeros(8), out)
    with pytest.raises(ValueError, match="act and pw_act"):
        K.winograd_pointwise_fused(x, up, b, "mish", pw, b2, out)
    with pytest.raises(ValueError, match="out must be"):
        K.winograd_pointwise_fused(x, up, b, "silu", pw, b2, torch.empty(1, 16, 8, 8))  # not channels-last
    with pytest.raises(ValueError, match="out must be"):
        K.winograd_pointwise_fused(x, up, b, "silu", pw, b2, torch.empty(1, 16, 9, 9).contiguous(
            memory_format=torch.channels_last))
    with pytest.raises(ValueError, match="residual must be"):
        K.winograd_pointwise_fused(x, up, b, "silu", pw, b2, out, residual=torch.randn(1, 16, 8, 8))


@wino
def test_winograd_rejects_what_it_cannot_compute():
    u = K.winograd_weight(torch.randn(16, 8, 3, 3))
    assert u.shape == (36, 8, 16)
    with pytest.raises(ValueError, match="float32 CPU"):
        K.winograd_conv3x3(torch.randn(1, 8, 8, 8, dtype=torch.float64), u, None, (1, 1))
    with pytest.raises(ValueError, match="multiples of 8"):
        K.winograd_conv3x3(torch.randn(1, 12, 8, 8), K.winograd_weight(torch.randn(16, 12, 3, 3)), None, (1, 1))
    with pytest.raises(ValueError, match="C_in = 16"):
        K.winograd_conv3x3(torch.randn(1, 16, 8, 8), u, None, (1, 1))
    with pytest.raises(ValueError, match="no output"):
        K.winograd_conv3x3(torch.randn(1, 8, 2, 2), u, None, (0, 0))
    with pytest.raises(ValueError, match="act must be"):
        K.winograd_conv3x3(torch.randn(1, 8, 8, 8), u, None, (1, 1), "mish")
    with pytest.raises(ValueError, match="tiles_per_round"):
        K.winograd_conv3x3(torch.randn(1, 8, 8, 8), u, None, (1, 1), tiles_per_round=0)
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 3, 3\)"):
        K.winograd_weight(torch.randn(16, 8, 5, 5))


pw = pytest.mark.skipif(not K.pointwise_available(), reason="the native GEMM needs the build on x86 AVX2")


@pytest.fixture(params=["avx512", "avx2"])
def isa(request):
    """Runs a kernel test with its AVX-512 code (the GEMM's 12 x 32 and 12 x 16 tiles, the depthwise interior's
    32-channel blocks; where the CPU has AVX-512F) and with its AVX2 code; the process-wide
    default is restored afterwards."""
    if K.library() is None or (request.param == "avx512" and not K.set_avx512(True)):
        pytest.skip("this CPU has no AVX-512F" if K.library() is not None else "native kernels unavailable")
    K.set_avx512(request.param == "avx512")
    yield request.param
    K.set_avx512(True)


@pw
@pytest.mark.parametrize("n,ci,co,h,w", [
    (2, 16, 96, 9, 7),      # 126 pixels: 21 groups of 6 rows
    (1, 40, 24, 7, 7),      # 49 pixels (a group of one row and five padding rows); 24 = 16 + 8 columns
    (3, 5, 3, 2, 5),        # tiny: one partial panel, K below a vector
    (2, 600, 40, 3, 5),     # K in three blocks of 256 (partial sums kept in the output)
    (1, 1152, 192, 7, 7),   # B0's late stage at batch 1: panels split between threads
    (1, 32, 16, 5, 5),      # 25 rows: a 12-row tile with 11 padding rows
    (1, 64, 80, 7, 7),      # five panels split between threads: two pairs and a lone panel
])
@pytest.mark.parametrize("act", sorted(_ACTS64))
def test_pointwise_conv_matches_float64(n, ci, co, h, w, act, isa):
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w) * 3, torch.randn(co, ci, 1, 1) / ci ** 0.5, torch.randn(co)
    panels = K.pointwise_weight(wt)
    assert panels.shape == ((co + 15) // 16, ci, 16)
    ref = _ACTS64[act](F.conv2d(x.double(), wt.double(), b.double()))
    y = K.pointwise_conv(x, panels, b, co, act)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, ref) < 1e-5
    res = torch.randn(n, co, h, w).contiguous(memory_format=torch.channels_last)
    out = torch.full((n, co, h, w), float("nan")).contiguous(memory_format=torch.channels_last)
    y2 = K.pointwise_conv(x.contiguous(memory_format=torch.channels_last), panels, None, co, act, residual=res,
                          out=out)
    assert y2.data_ptr() == out.data_ptr()  # written where asked
    assert _rel(y2, _ACTS64[act](F.conv2d(x.double(), wt.double())) + res.double()) < 1e-5


@pw
@pytest.mark.parametrize("n,ci,co,h,w", [
    (3, 40, 24, 7, 7),      # 49 rows per image: 6-row tiles cut at every image boundary; 16 + 8 columns
    (2, 600, 40, 5, 3),     # K in three blocks of 256, each scaled per image
    (5, 96, 8, 2, 2),       # 4 rows per image, a lone 8-column panel (12-row tiles)
    (1, 144, 33, 11, 13),   # one image
    (8, 300, 56, 6, 5),     # at least two images per thread, as many each: one image's rows per work item
])
@pytest.mark.parametrize("act", ["identity", "silu"])
def test_gated_pointwise_conv_matches_float64(n, ci, co, h, w, act, isa):
    """``gate``: a squeeze-excite's (N, C_in) factors folded into the 1x1 conv (weights scaled per
    image) equal the conv of the gated input, on one thread and two."""
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w) * 3, torch.randn(co, ci, 1, 1) / ci ** 0.5, torch.randn(co)
    gate = torch.rand(n, ci)
    ref = _ACTS64[act](F.conv2d(x.double() * gate.double()[:, :, None, None], wt.double(), b.double()))
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            y = K.pointwise_conv(x, K.pointwise_weight(wt), b, co, act, gate=gate)
            assert _rel(y, ref) < 1e-5
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="gate"):
        K.pointwise_conv(x, K.pointwise_weight(wt), b, co, act, gate=torch.rand(n + 1, ci))


@pw
@pytest.mark.parametrize("ci,co", [(40, 16), (40, 24), (600, 40), (300, 48), (1280, 1000)])
@pytest.mark.parametrize("act", ["identity", "silu"])
def test_few_rows_equal_the_same_rows_in_a_full_tile_bit_for_bit(ci, co, act, isa):
    """A GEMM of 1-4 rows (a classifier or a 1x1 conv on a 1x1 map at batch 1) runs the few-rows
    tile (one to four rows, one to three panels), not a 12- or 8-row tile: each row's outputs
    equal, bit for bit, the same row's outputs computed inside a 24-row product, for one, two
    and three panels at a time, a masked last panel, K in blocks of 256 (partial sums), a
    residual and squeeze-excite gates; and are within float rounding of float64."""
    torch.manual_seed(0)
    big = torch.randn(24, ci, 1, 1) * 3
    wt, b = torch.randn(co, ci, 1, 1) / ci ** 0.5, torch.randn(co)
    res, gate = torch.randn(24, co, 1, 1), torch.rand(24, ci)
    panels = K.pointwise_weight(wt)
    full = K.pointwise_conv(big, panels, b, co, act, residual=res, gate=gate)
    for m in (1, 2, 3, 4):
        for start in (0, 7):
            rows = slice(start, start + m)
            y = K.pointwise_conv(big[rows], panels, b, co, act, residual=res[rows], gate=gate[rows])
            assert torch.equal(y, full[rows]), (m, start)
    ref = _ACTS64[act](F.conv2d(big.double() * gate.double()[:, :, None, None], wt.double(), b.double()))
    assert _rel(full, ref + res.double()) < 1e-5


@pw
@pytest.mark.parametrize("act", ["silu", "hardswish", "relu6"])
def test_avx512_code_equals_avx2_code_bit_for_bit(act):
    """The 16-lane code (GEMM tile, depthwise interior, their activations) does the AVX2 code's
    arithmetic step for step: the same outputs bit for bit, so results do not depend on the CPU."""
    if not K.set_avx512(True):
        pytest.skip("this CPU has no AVX-512F")
    torch.manual_seed(0)
    x, wt, b = torch.randn(2, 40, 9, 11) * 3, torch.randn(56, 40, 1, 1), torch.randn(56)
    dw_x, dw_w, gate = torch.randn(2, 56, 13, 12) * 3, torch.randn(56, 1, 5, 5), torch.rand(2, 40)
    outs = []
    try:
        for on in (True, False):
            K.set_avx512(on)
            y = K.pointwise_conv(x, K.pointwise_weight(wt), b, 56, act, gate=gate)
            d, _ = K.depthwise_forward(dw_x, K.depthwise_taps(dw_w), b, 1, (2, 2), act)
            outs.append((y, d))
    finally:
        K.set_avx512(True)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pw
@pytest.mark.parametrize("act", ["silu", "identity"])
def test_avx512_silu_equals_avx2_at_the_edges_of_exp(act):
    """exp16 applies 2^n with vscalefps where exp_v adds n to the exponent bits: equal bit for bit
    also where exp's clamps act (|z| near 87.3 and 88.4), on huge, tiny and subnormal inputs (all
    2^32 floats were compared once, outside the tests).  An identity 1x1 conv hands each value to
    the SiLU epilogue unchanged (no inf or NaN: times the zero weights they would spread)."""
    if not K.set_avx512(True):
        pytest.skip("this CPU has no AVX-512F")
    edges = torch.tensor([87.3365402, 88.3762626647949, 88.72283, 89.0, 103.9, 1e4, 3e38, 1e-30, 1e-39, 0.0],
                         dtype=torch.float32)
    near = torch.cat([torch.linspace(e - 0.05, e + 0.05, 257) for e in (87.3365402, 88.3762626647949)])
    vals = torch.cat([edges, near, torch.linspace(-120, 120, 4001)])
    vals = torch.cat([vals, -vals])
    c = 16
    x = torch.cat([vals, vals.new_zeros((-len(vals)) % c)]).view(1, -1, c).permute(0, 2, 1)[..., None]
    x = x.contiguous(memory_format=torch.channels_last)  # (1, 16, rows, 1): every value in some pixel
    outs = []
    try:
        for on in (True, False):
            K.set_avx512(on)
            outs.append(K.pointwise_conv(x, K.pointwise_weight(torch.eye(c)[:, :, None, None]), torch.zeros(c), c, act))
    finally:
        K.set_avx512(True)
    assert torch.equal(outs[0].contiguous().view(torch.int32), outs[1].contiguous().view(torch.int32))  # -0.0 too
    want = x if act == "identity" else F.silu(x.double()).float()
    assert torch.allclose(outs[0], want, rtol=1e-6, atol=1e-30)


@pw
@pytest.mark.parametrize("c", [16, 8, 5])  # whole 16-lane vectors, an 8-lane rest, the scalar tail
def test_gelu_epilogue_is_the_exact_gelu_to_float32_accuracy(c):
    """The GEMM epilogue's GELU (erf by Abramowitz & Stegun 7.1.26, as PyTorch's vectorized erf)
    against float64's exact GELU over [-12, 12] and the far tails: absolute error within 3e-7 of
    max(1, |x|) (PyTorch's float32 F.gelu: 1.7e-7 there), -0.0 for the far negative tail as
    F.gelu gives 0, the identity for the far positive one; the AVX-512 and AVX2 code equal bit
    for bit.  An identity 1x1 conv hands each value to the epilogue unchanged."""
    vals = torch.cat([torch.linspace(-12, 12, 48001),
                      torch.tensor([1e-30, 1e-39, 0.0, 30.0, 1e4, 3e38])])
    vals = torch.cat([vals, -vals])
    x = torch.cat([vals, vals.new_zeros((-len(vals)) % c)]).view(1, -1, c).permute(0, 2, 1)[..., None]
    x = x.contiguous(memory_format=torch.channels_last)
    outs = []
    try:
        for on in (True, False):
            if on and not K.set_avx512(True):
                continue
            K.set_avx512(on)
            outs.append(K.pointwise_conv(x, K.pointwise_weight(torch.eye(c)[:, :, None, None]), torch.zeros(c), c, "gelu"))
    finally:
        K.set_avx512(True)
    assert all(torch.equal(o.contiguous().view(torch.int32), outs[0].contiguous().view(torch.int32)) for o in outs)
    want = F.gelu(x.double())
    err = (outs[0].double() - want).abs() / x.double().abs().clamp(min=1)
    assert err.max() < 3e-7, err.max()
    far = x.abs() > 20
    assert torch.equal(outs[0][far & (x > 0)], x[far & (x > 0)]) and (outs[0][far & (x < 0)] == 0).all()


@pw
@pytest.mark.parametrize("n,ci,co,h,w,k,stride,pad", [
    (2, 3, 24, 17, 15, 3, 2, (1, 1)),   # a stem: 3 channels (runs of 9 floats), 24 = 16 + 8 outputs, odd map
    (1, 24, 96, 19, 19, 3, 2, (1, 1)),  # EfficientNetV2's stride-2 Fused-MBConv
    (2, 5, 7, 9, 8, 5, 2, (2, 1)),      # 5x5, unequal padding, one partial panel
    (1, 3, 64, 23, 23, 7, 2, (3, 3)),   # a 7x7 stem
    (1, 512, 40, 5, 5, 3, 1, (1, 1)),   # K = 4608: a patch buffer of one tile's rows, K in 18 blocks
    (3, 16, 32, 6, 6, 3, 1, (0, 0)),    # no padding: every patch inside the map
    (2, 8, 16, 7, 7, 1, 2, (0, 0)),     # 1x1 stride 2
    (1, 4, 16, 2, 3, 3, 1, (1, 1)),     # every patch crosses the border
])
@pytest.mark.parametrize("act", sorted(_ACTS64))
def test_dense_conv_matches_float64(n, ci, co, h, w, k, stride, pad, act, isa):
    """The GEMM over gathered patches (kernels.conv_forward: stems, stride-2 3x3 convs) against
    float64 conv2d, with bias, activation, residual and a caller's output buffer."""
    torch.manual_seed(0)
    x, wt, b = torch.randn(n, ci, h, w) * 3, torch.randn(co, ci, k, k) / (ci * k * k) ** 0.5, torch.randn(co)
    panels = K.conv_weight(wt)
    assert panels.shape == ((co + 15) // 16, k * k * ci, 16)
    ref = F.conv2d(x.double(), wt.double(), b.double(), stride, pad)
    y = K.conv_forward(x, panels, b, co, (k, k), stride, pad, act)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
    assert _rel(y, _ACTS64[act](ref)) < 1e-5
    res = torch.randn(ref.shape).contiguous(memory_format=torch.channels_last)
    out = torch.full(ref.shape, float("nan")).contiguous(memory_format=torch.channels_last)
    y2 = K.conv_forward(x, panels, None, co, (k, k), stride, pad, act, residual=res, out=out)
    assert y2.data_ptr() == out.data_ptr()
    assert _rel(y2, _ACTS64[act](F.conv2d(x.double(), wt.double(), None, stride, pad)) + res.double()) < 1e-5


@pw
@pytest.mark.parametrize("ci,k,stride,pad", [(3, 3, 2, (1, 1)), (24, 3, 2, (1, 1)), (5, 5, 1, (2, 1))])
def test_dense_conv_is_the_1x1_gemm_on_the_unfolded_input_bit_for_bit(ci, k, stride, pad, isa):
    """The patches it gathers (zeros in the padding, taps in (kh, kw, c) order) are exactly those of
    F.unfold: the 1x1 GEMM on the unfolded tensor gives the same bits."""
    torch.manual_seed(0)
    x, wt, b = torch.randn(2, ci, 11, 13), torch.randn(40, ci, k, k), torch.randn(40)
    y = K.conv_forward(x, K.conv_weight(wt), b, 40, (k, k), stride, pad, "silu")
    cols = F.unfold(F.pad(x, (pad[1], pad[1], pad[0], pad[0])), k, stride=stride)  # (N, C*k*k, L), c-major
    cols = cols.reshape(2, ci, k, k, -1).permute(0, 2, 3, 1, 4).reshape(2, k * k * ci, *y.shape[2:])
    z = K.pointwise_conv(cols, K.conv_weight(wt), b, 40, "silu")
    assert torch.equal(y, z)


@pw
def test_dense_conv_rejects_what_it_cannot_compute():
    panels = K.conv_weight(torch.randn(16, 8, 3, 3))
    with pytest.raises(ValueError, match="conv_weight"):
        K.conv_forward(torch.randn(1, 4, 8, 8), panels, None, 16, (3, 3))  # 4 channels, panels for 8
    with pytest.raises(ValueError, match="does not fit"):
        K.conv_forward(torch.randn(1, 8, 2, 2), panels, None, 16, (3, 3))
    with pytest.raises(ValueError, match="act must be"):
        K.conv_forward(torch.randn(1, 8, 8, 8), panels, None, 16, (3, 3), act="mish")
    with pytest.raises(ValueError, match="float32"):
        K.conv_forward(torch.randn(1, 8, 8, 8, dtype=torch.float64), panels, None, 16, (3, 3))
    with pytest.raises(ValueError, match="out of range"):
        K.conv_forward(torch.randn(1, 8, 8, 8), panels, None, 16, (3, 3), stride=0)
    with pytest.raises(ValueError, match=r"\(C_out, C_in, KH, KW\)"):
        K.conv_weight(torch.randn(16, 8))


@pw
@pytest.mark.parametrize("c,h,w,k,stride,pad", [
    (56, 13, 12, 5, 1, (2, 2)),    # 12 columns: a full block of 8 and a partial one, borders in both
    (40, 7, 7, 5, 1, (2, 2)),      # B0's 7x7 maps: one partial block, most taps at the border
    (24, 9, 20, 3, 1, (1, 1)),     # 3x3 stride 1: an interior block between two border blocks
    (40, 11, 11, 5, 2, (2, 2)),    # 5x5 stride 2, channels past a multiple of 16
    (16, 6, 5, 3, 1, (0, 1)),      # unequal padding, a row shorter than a block
    (8, 5, 3, 5, 1, (2, 2)),       # a row narrower than the kernel
])
@pytest.mark.parametrize("act", ["identity", "silu", "hardswish"])
def test_depthwise_blocks_equal_the_pixel_code_bit_for_bit(c, h, w, k, stride, pad, act):
    """The 8-pixel register-blocked depthwise code (AVX-512, 3x3 and 5x5) adds each output's taps
    in the order the 4-pixel and per-pixel code do, skipping those in the padding: equal bits,
    and its channel sums equal theirs.  (Channel counts are multiples of 8: past those the
    per-pixel code's scalar tail uses the scalar exp, which rounds differently from the vector one;
    odd counts are held to float64 in test_depthwise_forward_matches_float64.)"""
    if not K.set_avx512(True):
        pytest.skip("this CPU has no AVX-512F")
    torch.manual_seed(0)
    x, wt, b = torch.randn(3, c, h, w) * 3, torch.randn(c, 1, k, k), torch.randn(c)
    outs = []
    try:
        for on in (True, False):
            K.set_depthwise_blocks(on)
            outs.append(K.depthwise_forward(x, K.depthwise_taps(wt), b, stride, pad, act, channel_sums=True))
            assert K.depthwise_last_blocked() is on  # the blocks really ran, then really did not
    finally:
        K.set_depthwise_blocks(True)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    ref = _ACTS64[act](F.conv2d(x.double(), wt.double(), b.double(), stride, pad, 1, c))
    assert _rel(outs[0][0], ref) < 1e-5


@pw
@pytest.mark.parametrize("n,ci,cm,h,w,k,stride,pad", [
    (2, 16, 96, 12, 12, 3, 2, (1, 1)),   # MBConv's stride-2 3x3 (B0 stage 2's first block, small)
    (2, 24, 144, 9, 11, 3, 1, (1, 1)),   # stride 1: each expanded row read by three output rows
    (1, 24, 40, 11, 11, 5, 2, (2, 2)),   # 5x5 stride 2
    (3, 40, 48, 7, 7, 5, 1, (2, 2)),     # 7x7 maps: more kernel rows than a thread's share of rows
    (3, 13, 37, 9, 8, 3, 1, (0, 1)),     # odd channels, unequal padding
])
@pytest.mark.parametrize("acts", [("silu", "silu"), ("hardswish", "relu"), ("relu6", "identity"), ("gelu", "gelu")])
@pytest.mark.parametrize("int8", [False, True])
def test_expand_depthwise_equals_the_two_kernels_bit_for_bit(n, ci, cm, h, w, k, stride, pad, acts, int8, isa):
    """The expand 1x1 conv (fp32 GEMM, or the int8 GEMM with per-pixel input ranges) and the
    depthwise conv in one pass (the expanded rows in a per-thread ring, never written out) give
    the bits of the two kernels called one after the other, on 1 or 2 threads (the rows at the
    seam of two threads' shares are expanded twice); the channel sums agree to rounding (partial
    sums split differently) and, in fp32, with float64."""
    torch.manual_seed(0)
    x = torch.randn(n, ci, h, w).contiguous(memory_format=torch.channels_last)
    wpw, bpw = torch.randn(cm, ci, 1, 1) * 0.3, torch.randn(cm)
    wdw, bdw = torch.randn(cm, 1, k, k) * 0.3, torch.randn(cm)
    taps = K.depthwise_taps(wdw)
    pa, da = (K.DW_ACT_CODES[a] for a in acts)
    e = torch.empty(n, cm, h, w).contiguous(memory_format=torch.channels_last)
    oh, ow = (h + 2 * pad[0] - k) // stride + 1, (w + 2 * pad[1] - k) // stride + 1
    ref = torch.empty(n, cm, oh, ow).contiguous(memory_format=torch.channels_last)
    ref_sums = torch.empty(n, cm)
    if int8:
        panels, bpw, dq = K.pointwise_weight_q8(wpw, bpw)  # bpw: the int8 GEMM's cols (scales, sums, bias)
        K.pointwise_q8_into(x, panels, bpw, e, pa)
        x64 = K.quantize_rows(x).double()
        wpw = dq
    else:
        panels = K.pointwise_weight(wpw)
        K.pointwise_into(x, panels, bpw, e, pa)
        x64 = x.double()
    K.depthwise_into(e, taps, bdw, ref, ref_sums, stride, pad, da)
    y64 = _ACTS64[acts[1]](F.conv2d(_ACTS64[acts[0]](F.conv2d(x64, wpw.double(), (bpw[2, :cm] if int8 else bpw).double())),
                                    wdw.double(), bdw.double(), stride, pad, 1, cm))
    threads = torch.get_num_threads()
    try:
        for nt in (1, 2):
            torch.set_num_threads(nt)
            y, sums = torch.full_like(ref, float("nan")), torch.full_like(ref_sums, float("nan"))
            assert K.expand_depthwise_into(x, panels, bpw, pa, taps, bdw, y, sums, stride, pad, da) is y
            assert torch.equal(y, ref)
            assert _rel(sums, ref_sums) < 1e-6 and _rel(sums, y64.sum((2, 3))) < 1e-5
            nosums = torch.full_like(ref, float("nan"))
            K.expand_depthwise_into(x, panels, bpw, pa, taps, bdw, nosums, None, stride, pad, da)
            assert torch.equal(nosums, ref)
    finally:
        torch.set_num_threads(threads)
    assert _rel(ref, y64) < 1e-5
    with pytest.raises(ValueError, match="panels"):
        K.expand_depthwise_into(x, K.pointwise_weight(wpw[:, :ci - 1]), bpw, pa, taps, bdw, ref, None, stride, pad, da)


@pw
def test_pointwise_conv_rejects_what_it_cannot_read():
    wt = torch.randn(24, 8, 1, 1)
    panels = K.pointwise_weight(wt)
    x = torch.randn(1, 8, 4, 4)
    with pytest.raises(ValueError, match=r"\(C_out, C_in, 1, 1\)"):
        K.pointwise_weight(torch.randn(24, 8, 3, 3))
    with pytest.raises(ValueError, match="float32 CPU"):
        K.pointwise_conv(x.double(), panels, None, 24)
    with pytest.raises(ValueError, match="panels must be"):
        K.pointwise_conv(torch.randn(1, 9, 4, 4), panels, None, 24)
    with pytest.raises(ValueError, match="panels must be"):
        K.pointwise_conv(x, panels, None, 40)  # more channels than the panels hold
    with pytest.raises(ValueError, match="act must be"):
        K.pointwise_conv(x, panels, None, 24, "mish")
    with pytest.raises(ValueError, match="residual"):
        K.pointwise_conv(x, panels, None, 24, residual=torch.randn(1, 24, 4, 5))
    with pytest.raises(ValueError, match="out must be"):
        K.pointwise_conv(x, panels, None, 24, out=torch.empty(1, 24, 4, 4))  # not channels-last
    with pytest.raises(ValueError, match="out must be"):
        K.depthwise_forward(x, K.depthwise_taps(torch.randn(8, 1, 3, 3)), None, 1, (1, 1),
                            out=torch.empty(1, 8, 4, 4))


@wino
def test_winograd_writes_into_a_given_output():
    torch.manual_seed(0)
    x, wt = torch.randn(1, 8, 9, 9), torch.randn(16, 8, 3, 3)
    out = torch.full((1, 16, 9, 9), float("nan")).contiguous(memory_format=torch.channels_last)
    y = K.winograd_conv3x3(x, K.winograd_weight(wt), None, (1, 1), out=out)
    assert y.data_ptr() == out.data_ptr()
    assert _rel(y, F.conv2d(x.double(), wt.double(), None, 1, 1)) < 2e-5


@pw
def test_pointwise_conv_streaming_stores_match(isa):
    """Outputs above twice the last-level cache (at least 16 MiB) leave by streaming stores (no
    read of each line before writing); the threshold lowered to 0, a small output takes that path
    and still matches, odd widths included."""
    lib = K.library()
    torch.manual_seed(0)
    default = lib.eff_pw_set_stream_bytes(0)
    assert default >= 16 << 20
    try:
        for co in (32, 48, 40, 24):  # whole panels (two, three), a masked 8-column tail (not streamed), 16 + 8
            x, wt = torch.randn(2, 24, 9, 7), torch.randn(co, 24, 1, 1)
            y = K.pointwise_conv(x, K.pointwise_weight(wt), None, co, "silu")
            assert _rel(y, F.silu(F.conv2d(x.double(), wt.double()))) < 1e-5
    finally:
        lib.eff_pw_set_stream_bytes(default)


@pw
def test_pointwise_conv_prefetching_the_next_tile_changes_no_bit(isa):
    """Inputs above 8 MiB have each GEMM tile prefetch the next tile's rows (a hint: the same
    arithmetic).  The threshold lowered to 0, small GEMMs take that path: outputs equal the
    unprefetched ones bit for bit over row counts that end mid-tile, K blocks (K > 256), the two-
    and three-panel tiles, residual and gate; 36 outputs per row (rows not 32-byte aligned) check
    that the prefetch flag never turns on the streaming stores, which need aligned rows."""
    lib = K.library()
    torch.manual_seed(0)
    default = lib.eff_pw_set_prefetch_bytes(0)
    assert default == 8 << 20
    try:
        for n, ci, co, h, w in [(2, 24, 32, 9, 7), (1, 300, 48, 11, 5), (3, 40, 36, 6, 6), (2, 64, 80, 13, 3)]:
            x, wt, b = torch.randn(n, ci, h, w), torch.randn(co, ci, 1, 1) / ci ** 0.5, torch.randn(co)
            res, gate = torch.randn(n, co, h, w), torch.rand(n, ci)
            panels = K.pointwise_weight(wt)
            outs = []
            for limit in (0, 1 << 62):
                lib.eff_pw_set_prefetch_bytes(limit)
                outs.append(K.pointwise_conv(x, panels, b, co, "silu", residual=res, gate=gate))
            assert torch.equal(outs[0], outs[1]), (n, ci, co)
            ref = F.silu(F.conv2d(x.double() * gate.double()[:, :, None, None], wt.double(), b.double())) + res.double()
            assert _rel(outs[0], ref) < 1e-5
    finally:
        lib.eff_pw_set_prefetch_bytes(default)


@pw
def test_silu_underflows_to_zero_as_in_pytorch(isa):
    """SiLU(z) for z below -88.4 is -0 (exp(-z) overflows, z / inf), as PyTorch computes it below -88.7, in
    every kernel with a SiLU epilogue (1x1 GEMM, depthwise conv, in-place SiLU; AVX-512, AVX2
    and the scalar tail alike), and the sigmoid gate underflows to 0.  Clamping exp's argument
    instead gave z * 4e-39: tiny values whose products with weights are subnormal and slowed
    the next layer's FMAs (microcode assists) on randomly initialised EfficientNetV2-S."""
    z = torch.tensor([-1e4, -1000.0, -100.0, -88.5, -88.0, -87.0, -20.0, -1.0, 0.0, 1.0, 20.0, 88.0, 100.0, 1e4])
    c = z.numel() + 3  # 17 channels: a vector body and a scalar tail
    zc = torch.cat([z, torch.full((3,), -500.0)])
    ref = F.silu(zc.double())
    # 1x1 conv with an identity weight: output channel j = act(input channel j)
    x = zc.reshape(1, c, 1, 1).expand(2, c, 3, 5).contiguous(memory_format=torch.channels_last)
    eye = torch.eye(c).reshape(c, c, 1, 1)
    y = K.pointwise_conv(x, K.pointwise_weight(eye), torch.zeros(c), c, "silu")
    # depthwise 3x3 with only the centre tap: output = act(input)
    taps = torch.zeros(c, 1, 3, 3)
    taps[:, 0, 1, 1] = 1.0
    d, _ = K.depthwise_forward(x, K.depthwise_taps(taps), torch.zeros(c), 1, (1, 1), "silu")
    s = K.silu_(zc.clone())
    for out in (y[0, :, 1, 2], d[0, :, 1, 2], s):
        assert torch.equal(out[zc < -88.4], torch.zeros(int((zc < -88.4).sum()))), out
        assert torch.allclose(out.double(), ref, rtol=1e-6, atol=1e-35)  # float32 PyTorch: -3e-37 at -88.5
    # the squeeze-excite's sigmoid gate: logits below -88.4 give exactly 0
    w1, b1 = torch.eye(c), torch.zeros(c)
    g = K.se_gates(zc.reshape(1, c), w1, b1, torch.eye(c), torch.zeros(c), "identity", "sigmoid")
    assert torch.equal(g[0][zc < -88.4], torch.zeros(int((zc < -88.4).sum())))
    assert torch.allclose(g[0].double(), torch.sigmoid(zc.double()), rtol=1e-6, atol=1e-38)



def test_fma_peak_reports_a_rate_or_none_without_the_library(monkeypatch):
    """kernels.fma_peak (what `make bench` holds GFLOP/s against): a positive finite rate where
    the native library runs, for any thread count; None without it.  Its size is a timing, so
    it is checked by the benchmark's report, not here."""
    if K.library() is not None:
        for threads in (1, 2):
            rate = K.fma_peak(0.03, threads=threads)
            assert isinstance(rate, float) and 0.0 < rate < float("inf")
    monkeypatch.setattr(K, "_TRIED", True)
    monkeypatch.setattr(K, "_LIB", None)
    assert K.fma_peak(0.03) is None
