"""ResNet-RS: exact sizes vs timm, architecture conventions (deep stem, ResNet-D shortcut, SE on
the output, zero-init last BN, stage-wise drop path), logit parity with timm, cards."""
from __future__ import annotations

import pytest
import torch

import effnets
from effnets.blocks import Bottleneck
from effnets.registry import get_entry, get_spec, model_card
from conftest import randomize_bn, rel_err

timm = pytest.importorskip("timm")

# timm resnetrs* with 1000 classes (reference-numbers §4b)
PARAMS = {
    50: 35_691_912, 101: 63_618_696, 152: 86_621_576, 200: 93_209_992,
    270: 129_861_448, 350: 163_956_168, 420: 191_891_656,
}
BIG = {270, 350, 420}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", [pytest.param(d, marks=pytest.mark.slow) if d in BIG else d for d in PARAMS])
def test_param_count_equals_timm(depth):
    with torch.device("meta"):  # shapes only
        ours = n_params(get_entry(f"resnet_rs_{depth}").build())
        theirs = n_params(timm.create_model(f"resnetrs{depth}", pretrained=False))
    assert ours == theirs == PARAMS[depth]


# reference-numbers §4a (tensorflow/tpu resnet_model.py)
LAYERS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3), 200: (3, 24, 36, 3),
          270: (4, 29, 53, 4), 350: (4, 36, 72, 4), 420: (4, 44, 87, 4)}


@pytest.mark.parametrize("depth", list(LAYERS))
def test_stage_table(depth):
    spec = get_spec(f"resnet_rs_{depth}")
    assert tuple(s.num_blocks for s in spec.stages) == LAYERS[depth]
    assert tuple(s.out_chs for s in spec.stages) == (256, 512, 1024, 2048)
    assert tuple(s.stride for s in spec.stages) == (1, 2, 2, 2)
    assert spec.stem.widths == (32, 32, 64) and spec.stem.pool == "conv"


def test_structure_of_resnet_rs_50():
    m = get_entry("resnet_rs_50").build()
    # stem: 3x3/2 to 32, 32, 64, then a strided 3x3 conv in place of the max-pool
    assert [c.conv.out_channels for c in (m.stem.conv1, m.stem.conv2, m.stem.conv3, m.stem.pool)] == [32, 32, 64, 64]
    assert m.stem.conv1.conv.stride == (2, 2) and m.stem.pool.conv.stride == (2, 2)
    assert isinstance(m.stem.conv1.act, torch.nn.ReLU)
    b = m.stages[1][0]  # first block of stage 1: 256 -> 512, stride 2
    assert isinstance(b, Bottleneck)
    assert b.conv1.conv.out_channels == 128 and b.conv2.conv.stride == (2, 2)
    assert isinstance(b.shortcut.pool, torch.nn.AvgPool2d) and b.shortcut.conv.conv.stride == (1, 1)
    assert m.stages[0][0].shortcut.conv.conv.stride == (1, 1)  # stride-1 projection: no pool
    assert isinstance(m.stages[0][0].shortcut.pool, torch.nn.Identity)
    # SE 0.25 of the block output (512 -> 128), not of the input (256 -> 64)
    assert (b.se.conv_reduce.in_channels, b.se.conv_reduce.out_channels) == (512, 128)
    assert m.conv_head is None and m.classifier.in_features == 2048


def test_zero_init_last_bn_makes_blocks_identity_branches():
    m = get_entry("resnet_rs_50").build().eval()
    bns = [blk.conv3.bn.weight for s in m.stages for blk in s]
    assert len(bns) == 16 and all(torch.count_nonzero(w) == 0 for w in bns)
    # with the residual branch at zero, a stride-1 identity block is just relu(x)
    blk = m.stages[0][1]
    x = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        assert torch.equal(blk(x), torch.relu(x))


def test_stage_wise_drop_path():
    # resnet_rs_200: stochastic depth 0.1 (resnetrs200_i256.yaml), 0.4/0.6/0.8/1.0 x rate per stage
    with torch.device("meta"):
        m = get_entry("resnet_rs_200").build()
    per_stage = [sorted({round(blk.drop_path.p, 9) for blk in s}) for s in m.stages]
    assert per_stage == [[0.04], [0.06], [0.08], [0.1]]
    m.set_regularization(drop_path=0.5)
    per_stage = [sorted({round(blk.drop_path.p, 9) for blk in s}) for s in m.stages]
    assert per_stage == [[0.2], [0.3], [0.4], [0.5]]
    with torch.device("meta"):
        assert {blk.drop_path.p for s in get_entry("resnet_rs_50").build().stages for blk in s} == {0.0}


def test_cards():
    c = model_card("resnet_rs_50")
    assert (c.train_size, c.test_size, c.dropout, c.drop_path) == (160, 160, 0.25, 0.0)
    assert dict(c.extra)["randaugment_magnitude"] == 10 and c.recipe == "resnet_rs"
    assert c.figures.top1 == 78.8 and c.figures.source
    c = model_card("resnet_rs_350")
    assert (c.train_size, c.dropout, c.drop_path) == (320, 0.4, 0.1)
    assert dict(c.extra)["randaugment_magnitude"] == 15 and len(dict(c.extra)["configs"]) == 2
    c = model_card("resnet_rs_200")
    assert (c.train_size, c.dropout, c.drop_path) == (256, 0.25, 0.1)
    assert get_spec("resnet_rs_420").dropout == 0.4 and get_spec("resnet_rs_420").drop_path == 0.1


def test_logit_parity_with_timm():
    torch.manual_seed(0)
    ref = timm.create_model("resnetrs50", pretrained=False).eval()
    randomize_bn(ref)  # gamma too: timm zero-inits the last BN of every block
    ours = effnets.create_model("resnet_rs_50", checkpoint=ref.state_dict()).eval()
    for size in (64, 67):
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            a, b = ours(x), ref(x)
        assert rel_err(a, b) < 1e-5, size
    # the check is sensitive: a strided 1x1 shortcut (no ResNet-D pool) loads the same weights
    plain = effnets.create_model("resnet_rs_50", avg_down=False, checkpoint=ref.state_dict()).eval()
    with torch.no_grad():
        assert rel_err(plain(x), b) > 1e-3


def test_forward_backward_every_param_gets_grad():
    torch.manual_seed(0)
    # zero_init_last off: with zeroed gammas the branch weights legitimately get zero gradient
    m = effnets.create_model("resnet_rs_50", num_classes=10, zero_init_last=False, drop_path=0.0).train()
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    missing = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
