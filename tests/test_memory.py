"""Memory-efficient training blocks and per-stage activation checkpointing: same numbers, less memory."""
import copy

import pytest
import torch

import effnets
from effnets.layers.memory import memory_efficient, set_memory_efficient
from effnets.profiling import saved_activation_bytes


def _step(model, x, me=True, ckpt=False, seed=1):
    m = copy.deepcopy(model).train()
    if ckpt:
        m.set_grad_checkpointing(True)
    torch.manual_seed(seed)  # drop-path masks
    with memory_efficient(me):
        loss = m(x).logsumexp(1).mean()
        loss.backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters()}
    return loss.detach(), grads, {k: v.clone() for k, v in m.state_dict().items()}


def _assert_same(a, b, rtol=1e-5):
    (l0, g0, s0), (l1, g1, s1) = a, b
    assert torch.allclose(l0, l1, rtol=rtol, atol=1e-7)
    # float summation order differs (channels_last, recompute): compare against the gradient
    # scale of the whole model, so near-zero (cancelling) gradients do not fail on rounding
    # (B0's stem weight gradient, a sum over every pixel, differed by 1.05e-4 of that scale once
    # on an AVX-512 CPU, where oneDNN's conv backward sums in another order; a real error is ~1e-2)
    scale = max(g.abs().max() for g in g0.values())
    for k in g0:
        assert ((g0[k] - g1[k]).abs().max() / scale) < rtol * 30, k
    for k in s0:  # BN running statistics and batch counters updated exactly once (a second
        # update would move them by ~momentum = 10%; float rounding upstream moves them ~1e-5)
        assert torch.allclose(s0[k].float(), s1[k].float(), rtol=10 * max(rtol, 1e-5), atol=rtol / 10), k


@pytest.mark.parametrize("name", ["efficientnet_b0", "mobilenet_v3_large", "efficientnetv2_b0", "mobilenet_v2"])
def test_memory_efficient_same_gradients_and_less_saved(name):
    torch.manual_seed(0)
    model = effnets.create_model(name, num_classes=10, drop_path=0.2)
    x = torch.randn(2, 3, 64, 64)
    # MobileNetV2 (ReLU6): plain float32 PyTorch's loss is 1.9e-5 from float64's here, the native
    # BN + ReLU6 kernels' 4e-7 (measured once): the two float32 sides differ by PyTorch's rounding
    _assert_same(_step(model, x, me=False), _step(model, x, me=True), rtol=1e-4 if name == "mobilenet_v2" else 1e-5)
    with memory_efficient(False):
        plain = saved_activation_bytes(model, x)
    with memory_efficient(True):
        lean = saved_activation_bytes(model, x)
    limit = 0.8 if name not in ("mobilenet_v3_large", "mobilenet_v2") else 0.9  # ReLU-type acts save less
    assert lean < limit * plain, (lean, plain)


def test_memory_efficient_channels_last_and_per_model_switch():
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    _assert_same(_step(model, x, me=False), _step(model, x, me=True))
    set_memory_efficient(False, model)  # per-model override wins over the global default
    with memory_efficient(True):
        off = saved_activation_bytes(model, x)
    set_memory_efficient(True, model)
    on = saved_activation_bytes(model, x)
    assert on < 0.8 * off


@pytest.mark.parametrize("name,size", [("vit_tiny_16", 64), ("coatnet_0", 64)])
def test_transformer_mlp_keeps_no_gelu_output_for_backward(name, size):
    """The ViT and CoAtNet MLPs recompute GELU's output in backward instead of saving it
    (layers.memory.act_linear): same loss and gradients as the plain modules, and the saved
    activations shrink by at least 80% of one (tokens x hidden) float tensor per MLP."""
    torch.manual_seed(0)
    model = effnets.create_model(name, num_classes=10)
    x = torch.randn(2, 3, size, size)
    _assert_same(_step(model, x, me=False), _step(model, x, me=True))
    mlps = [m for m in model.modules() if type(m).__name__ in ("Mlp", "TransformerMlp")]
    hidden_bytes = []
    hooks = [m.fc1.register_forward_hook(lambda mod, a, out: hidden_bytes.append(out.numel() * 4)) for m in mlps]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    with memory_efficient(True):
        lean = saved_activation_bytes(model, x)
        for m in mlps:  # the MLPs alone switched off (CoAtNet's conv stages stay memory-efficient)
            set_memory_efficient(False, m)
        plain = saved_activation_bytes(model, x)
    assert len(hidden_bytes) == len(mlps) > 0 and plain - lean >= 0.8 * sum(hidden_bytes), (plain, lean)


@pytest.mark.parametrize("name", ["vit_tiny_16", "efficientnet_b0", "mobilenet_v3_large"])
def test_memory_efficient_training_under_bf16_autocast(name):
    """Under torch.autocast (bf16 on CPU) the memory-efficient layers' backward passes work in the
    forward's dtype and return each gradient in its input's dtype: the gradients match the plain
    modules'.  Before, both raised a dtype error in backward: the transformer MLP multiplied a bf16
    gradient by the fp32 weight; BN + act's recomputed BN output was promoted to fp32 by the fp32
    statistics and met the bf16 input in native_batch_norm_backward."""
    torch.manual_seed(0)
    model = effnets.create_model(name, num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for me in (False, True):
        m = copy.deepcopy(model).train()
        torch.manual_seed(1)  # drop-path masks
        with memory_efficient(me), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(x).float().logsumexp(1).mean()
        loss.backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert all(g.dtype == torch.float32 for g in grads[1].values())
    scale = max(g.abs().max() for g in grads[0].values())
    worst = max(((grads[0][k] - grads[1][k]).abs().max() / scale).item() for k in grads[0])
    assert worst < 1e-3, worst  # the same bf16 products in the same order (measured: equal); a wrong one is off by ~1


def test_act_linear_matches_the_modules_for_each_activation_and_keeps_dropout():
    """act_linear gives the outputs and gradients of linear(act(h)) for GELU (both forms), SiLU
    and ReLU; a ViT MLP with dropout between GELU and fc2 runs the plain modules in training
    (the mask needs the stored product), and none of this runs in eval."""
    from torch import nn

    from effnets.layers.memory import act_linear
    from effnets.nets.vit import Mlp
    torch.manual_seed(0)
    lin = nn.Linear(24, 7)
    owner = nn.Module()  # training, no per-module switch: the global default (on)
    for act in (nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.ReLU()):
        h = torch.randn(3, 5, 24, requires_grad=True)
        h2 = h.detach().clone().requires_grad_(True)
        y, want = act_linear(h, act, lin, owner), lin(act(h2))
        assert torch.allclose(y, want, atol=1e-6)
        g = torch.randn_like(y)
        gs = torch.autograd.grad(y, [h, lin.weight, lin.bias], g)
        gw = torch.autograd.grad(want, [h2, lin.weight, lin.bias], g)
        assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(gs, gw)), act
    mlp = Mlp(8, 32, drop=0.5).train()
    torch.manual_seed(3)
    a = mlp(torch.ones(2, 4, 8))
    torch.manual_seed(3)
    b = mlp.drop2(mlp.fc2(mlp.drop1(mlp.act(mlp.fc1(torch.ones(2, 4, 8))))))
    assert torch.equal(a, b) and (a != mlp.eval()(torch.ones(2, 4, 8))).any()  # dropout really applied


def test_eval_and_export_use_plain_ops():
    from effnets.layers import memory as M
    calls = []
    orig = M._BatchNormAct.forward

    def spy(ctx, *a):
        calls.append(1)
        return orig(ctx, *a)

    model = effnets.create_model("efficientnet_b0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    try:
        M._BatchNormAct.forward = staticmethod(spy)
        with torch.no_grad():
            model(x)
        traced = torch.jit.trace(model, x)
        assert calls == []
        model.train()
        model(x).sum().backward()
        assert calls  # training does use it
    finally:
        M._BatchNormAct.forward = staticmethod(orig)
    assert "BatchNormAct" not in str(traced.inlined_graph)


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet_rs_50"])
def test_grad_checkpointing_identical(name):
    torch.manual_seed(0)
    model = effnets.create_model(name, num_classes=10, drop_path=0.3)
    x = torch.randn(2, 3, 64, 64)
    _assert_same(_step(model, x, ckpt=False), _step(model, x, ckpt=True))
    _assert_same(_step(model, x, me=False), _step(model, x, me=False, ckpt=True))


def test_grad_checkpointing_drop_path_really_random():
    """Different seeds draw different masks (so 'identical' above is not vacuous)."""
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10, drop_path=0.5)
    x = torch.randn(4, 3, 64, 64)
    a = _step(model, x, ckpt=True, seed=1)[0]
    b = _step(model, x, ckpt=True, seed=2)[0]
    assert not torch.allclose(a, b)


def test_grad_checkpointing_vit():
    torch.manual_seed(0)
    model = effnets.create_model("vit_tiny_16", num_classes=10, drop_path=0.2)
    x = torch.randn(2, 3, 64, 64)
    _assert_same(_step(model, x), _step(model, x, ckpt=True))


def test_grad_checkpointing_lowers_peak_memory():
    from effnets.measure import measure_training
    torch.manual_seed(0)
    model = effnets.create_model("efficientnet_b0", num_classes=10)
    # large enough that activations, not weights and gradients, dominate the peak
    plain = measure_training(copy.deepcopy(model), 128, 8, warmup=1, iters=1).peak_memory_bytes
    model.set_grad_checkpointing(True)
    ckpt = measure_training(model, 128, 8, warmup=1, iters=1).peak_memory_bytes
    assert ckpt < 0.8 * plain, (ckpt, plain)
