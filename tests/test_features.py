"""features_only backbones: output shapes equal feature_info for every family."""
import math

import pytest
import torch

import effnets
from effnets.errors import ConfigError
from effnets.features import FeatureNet, default_out_indices

CASES = [
    ("efficientnet_b0", dict(width=0.25, depth=0.25)),
    ("efficientnet_b0", dict(width=0.25, depth=0.25, padding="same")),
    ("efficientnetv2_b0", dict(width=0.25, depth=0.25)),
    ("mobilenet_v1", dict(width=0.25)),
    ("mobilenet_v2", dict(width=0.35)),
    ("mobilenet_v3_small", dict(width=0.5)),
    ("mobilenet_v3_large", dict(width=0.35)),
    ("mnasnet_a1", dict(width=0.35)),
    ("mnasnet_b1", dict(width=0.35)),
    ("resnet_rs_50", dict(width=0.25, depth=0.25)),
    ("coatnet_0", dict(img_size=64)),
    ("vit_tiny_16", dict(img_size=64)),
]


@pytest.mark.parametrize("name,ov", CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
@pytest.mark.parametrize("size", [77])  # odd: checks ceil(size / reduction)
def test_feature_shapes_match_feature_info(name, ov, size):
    if name.startswith("vit") and size % 16:
        size = 80
    full = effnets.create_model(name, **ov)
    n = len(full.feature_info)
    net = effnets.create_model(name, features_only=True, out_indices=tuple(range(n)), **ov).eval()
    assert isinstance(net, FeatureNet) and len(net.feature_info) == n
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        maps = net(x)
    assert len(maps) == n
    for f, m in zip(net.feature_info, maps):
        r = f["reduction"]
        assert m.shape == (2, f["num_chs"], math.ceil(size / r), math.ceil(size / r)), (f, tuple(m.shape))
    # the default picks one map per scale, strictly increasing reductions, ending at the last level
    d = default_out_indices(full.feature_info)
    red = [full.feature_info[i]["reduction"] for i in d]
    assert red == sorted(set(red)) and d[-1] == n - 1


def test_out_indices_negative_and_errors():
    net = effnets.create_model("mobilenet_v2", width=0.35, features_only=True, out_indices=(-1, 1))
    assert net.out_indices == (1, len(net.model.feature_info) - 1)
    assert net.channels() == [f["num_chs"] for f in net.feature_info]
    with pytest.raises(ConfigError, match="out of range"):
        effnets.create_model("mobilenet_v2", features_only=True, out_indices=(99,))
    with pytest.raises(ConfigError, match="features_only"):
        effnets.create_model("mobilenet_v2", out_indices=(1,))


def test_features_are_the_model_activations():
    m = effnets.create_model("efficientnet_b0", width=0.25, depth=0.25).eval()
    net = FeatureNet(m, out_indices=(len(m.feature_info) - 1,))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x)[0], m.forward_features(x))
