"""Analytic MACs against torch.utils.flop_counter (an independent counter) and the paper."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import effnets


def oracle_macs(model, size):
    from effnets.layers.attention import fused_attention
    model.eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad(), fused_attention(False):
        model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() // 2


def test_b0_macs_match_paper_and_oracle():
    p = effnets.profile("efficientnet_b0")
    assert p.input_size == (224, 224)
    assert abs(p.macs / 0.386e9 - 1) < 0.01  # reference-numbers.md §1c: 0.386 GMACs
    assert p.flops == 2 * p.macs
    assert p.params == 5_288_548


@pytest.mark.parametrize("name,size,overrides", [
    ("efficientnet_b0", 225, dict(padding="same")),  # "same" padding counted on the padded input
    ("mobilenet_v3_small", 160, {}),
    ("mnasnet_a1", 96, {}),
    ("mobilenet_v1", 128, {}),
    ("vit_tiny_16", 224, {}),  # attention matmuls counted (profile_macs)
    ("coatnet_0", 224, {}),
])
def test_macs_equal_flop_counter(name, size, overrides):
    model = effnets.create_model(name, **overrides)
    assert effnets.profile(model, size).macs == oracle_macs(model, size)


def test_activation_memory_grows_with_batch_and_size():
    a = effnets.profile("mobilenet_v3_small", 96, batch_size=1).activation_bytes
    b = effnets.profile("mobilenet_v3_small", 96, batch_size=4).activation_bytes
    c = effnets.profile("mobilenet_v3_small", 192, batch_size=1).activation_bytes
    assert a > 0
    assert 3.5 < b / a < 4.5
    assert 3.0 < c / a < 5.0


def test_profile_keeps_model_state():
    model = effnets.create_model("mobilenet_v3_small").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    effnets.profile(model, 64)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_profile_errors():
    with pytest.raises(effnets.ConfigError):
        effnets.profile("efficientnet_b0", batch_size=0)
    with pytest.raises(effnets.ConfigError, match="did you mean"):
        effnets.profile("efficientnet_b9")
