"""EfficientNet / MobileNet / MnasNet against timm and torchvision: exact parameter counts
and identical eval logits after loading their state dicts (independent oracles)."""
import pytest
import timm
import torch
import torchvision

import effnets
from conftest import randomize_bn, rel_err

# our name -> timm name (tf_ ports share the architecture of the TF reference)
TIMM = {
    "efficientnet_b0": "tf_efficientnet_b0", "efficientnet_b1": "tf_efficientnet_b1",
    "efficientnet_b2": "tf_efficientnet_b2", "efficientnet_b3": "tf_efficientnet_b3",
    "efficientnet_b4": "tf_efficientnet_b4", "efficientnet_b5": "tf_efficientnet_b5",
    "efficientnet_b6": "tf_efficientnet_b6", "efficientnet_b7": "tf_efficientnet_b7",
    "efficientnet_b8": "tf_efficientnet_b8", "efficientnet_l2": "tf_efficientnet_l2",
    "mobilenet_v1": "mobilenetv1_100", "mobilenet_v2": "mobilenetv2_100",
    "mobilenet_v3_large": "mobilenetv3_large_100", "mobilenet_v3_small": "mobilenetv3_small_100",
    "mnasnet_a1": "semnasnet_100", "mnasnet_b1": "mnasnet_100",
}
TORCHVISION = {f"efficientnet_b{i}": f"efficientnet_b{i}" for i in range(8)} | {
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3_large": "mobilenet_v3_large",
    "mobilenet_v3_small": "mobilenet_v3_small", "mnasnet_b1": "mnasnet1_0"}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("ours,theirs", sorted(TIMM.items()))
def test_param_count_timm(ours, theirs):
    with torch.device("meta"):
        assert count(effnets.create_model(ours)) == count(timm.create_model(theirs))


@pytest.mark.parametrize("ours,theirs", sorted(TORCHVISION.items()))
def test_param_count_torchvision(ours, theirs):
    with torch.device("meta"):
        ref = getattr(torchvision.models, theirs)()
        assert count(effnets.create_model(ours)) == count(ref)


def check_logits(ours, ref, size, **overrides):
    torch.manual_seed(0)
    ref = randomize_bn(ref.eval())
    model = effnets.create_model(ours, checkpoint=ref.state_dict(), **overrides).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        a, b = model(x), ref(x)
    assert a.shape == b.shape
    assert rel_err(a, b) < 1e-5


TIMM_LOGITS = [
    ("efficientnet_b0", "efficientnet_b0", {}),  # timm's PyTorch-native B0: symmetric padding, eps 1e-5
    ("efficientnet_b0", "tf_efficientnet_b0", dict(padding="same", bn_eps=1e-3)),
    ("efficientnet_b3", "tf_efficientnet_b3", dict(padding="same", bn_eps=1e-3)),
    ("mobilenet_v1", "mobilenetv1_100", {}),
    ("mobilenet_v2", "mobilenetv2_100", {}),
    ("mobilenet_v3_large", "mobilenetv3_large_100", {}),
    ("mobilenet_v3_large", "tf_mobilenetv3_large_100", dict(padding="same", bn_eps=1e-3)),
    ("mobilenet_v3_small", "mobilenetv3_small_100", {}),
    ("mnasnet_a1", "semnasnet_100", {}),
    ("mnasnet_b1", "mnasnet_100", {}),
]


@pytest.mark.parametrize("size", [64, 97])  # even and odd: TF "same" padding differs
@pytest.mark.parametrize("ours,theirs,overrides", TIMM_LOGITS, ids=[f"{a}-{b}" for a, b, _ in TIMM_LOGITS])
def test_logits_timm(ours, theirs, overrides, size):
    check_logits(ours, timm.create_model(theirs), size, **overrides)


TV_LOGITS = [
    ("efficientnet_b0", "efficientnet_b0", {}),
    ("efficientnet_b5", "efficientnet_b5", dict(bn_eps=1e-3)),  # torchvision B5-B7 use eps 1e-3
    ("mobilenet_v2", "mobilenet_v2", {}),
    ("mobilenet_v3_large", "mobilenet_v3_large", dict(bn_eps=1e-3)),
    ("mobilenet_v3_small", "mobilenet_v3_small", dict(bn_eps=1e-3)),
    ("mnasnet_b1", "mnasnet1_0", {}),
]


@pytest.mark.parametrize("ours,theirs,overrides", TV_LOGITS, ids=[f"{a}-{b}" for a, b, _ in TV_LOGITS])
def test_logits_torchvision(ours, theirs, overrides):
    check_logits(ours, getattr(torchvision.models, theirs)(), 72, **overrides)


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["b1", "b2", "b4", "b5", "b6", "b7"])
def test_logits_timm_all_efficientnets(tag):
    check_logits(f"efficientnet_{tag}", timm.create_model(f"tf_efficientnet_{tag}"), 65,
                 padding="same", bn_eps=1e-3)


def test_safetensors_from_timm_is_order_independent(tmp_path):
    """safetensors stores keys sorted, not in module order: loading must not depend on order."""
    from safetensors.torch import save_file
    ref = randomize_bn(timm.create_model("mobilenetv3_large_100").eval())
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sorted(ref.state_dict().items())}, str(path))
    model = effnets.create_model("mobilenet_v3_large", checkpoint=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) < 1e-5
