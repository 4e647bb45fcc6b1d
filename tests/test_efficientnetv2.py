"""EfficientNetV2: exact sizes vs timm, golden stage tables from google/automl, logit parity with
timm's TF-ported models, cards, and a training step."""
from __future__ import annotations

import pytest
import torch

import effnets
from effnets.registry import get_entry, get_spec, model_card
from conftest import randomize_bn, rel_err

timm = pytest.importorskip("timm")

# timm tf_efficientnetv2_* with 1000 classes (reference-numbers §2b / §7)
PARAMS = {
    "s": 21_458_488, "m": 54_139_356, "l": 118_515_272, "xl": 208_119_808,
    "b0": 7_139_704, "b1": 8_141_052, "b2": 10_096_086, "b3": 14_358_406,
}
BIG = {"l", "xl"}


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _count_pair(tag: str) -> tuple[int, int]:
    # meta tensors: shapes only, no memory and no init cost
    with torch.device("meta"):
        ours = n_params(get_entry(f"efficientnetv2_{tag}").build())
        theirs = n_params(timm.create_model(f"tf_efficientnetv2_{tag}", pretrained=False))
    return ours, theirs


@pytest.mark.parametrize("tag", [pytest.param(t, marks=pytest.mark.slow) if t in BIG else t for t in PARAMS])
def test_param_count_equals_timm(tag):
    ours, theirs = _count_pair(tag)
    assert ours == theirs == PARAMS[tag]


def test_registered_names():
    assert effnets.list_models("efficientnetv2_*") == [f"efficientnetv2_{t}" for t in
                                                       ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")]


# Golden tables, from google/automl efficientnetv2/effnetv2_configs.py and its round_filters
# (int(c*w + 4) // 8 * 8, at least 8, NO 10% rule) and round_repeats (ceil(d*r)); head 1280*w.
# B2/B3 check the rounding: B3's 16*1.2 = 19.2 rounds to 16 (the 10% rule would give 24) and
# B2's stem 32*1.1 = 35.2 rounds to 32.
GOLDEN = {
    "s": (24, (24, 48, 64, 128, 160, 256), (2, 4, 4, 6, 9, 15), 1280),
    "m": (24, (24, 48, 80, 160, 176, 304, 512), (3, 5, 5, 7, 14, 18, 5), 1280),
    "b0": (32, (16, 32, 48, 96, 112, 192), (1, 2, 2, 3, 5, 8), 1280),
    "b1": (32, (16, 32, 48, 96, 112, 192), (2, 3, 3, 4, 6, 9), 1280),
    "b2": (32, (16, 32, 56, 104, 120, 208), (2, 3, 3, 4, 6, 10), 1408),
    "b3": (40, (16, 40, 56, 112, 136, 232), (2, 3, 3, 5, 7, 12), 1536),
}


@pytest.mark.parametrize("tag", list(GOLDEN))
def test_golden_stage_table(tag):
    stem, chs, reps, head = GOLDEN[tag]
    spec = get_spec(f"efficientnetv2_{tag}")
    assert spec.stem.out_chs == stem
    assert tuple(s.out_chs for s in spec.stages) == chs
    assert tuple(s.num_blocks for s in spec.stages) == reps
    assert spec.head.chs == head


def test_s_block_kinds_follow_paper_table4():
    spec = get_spec("efficientnetv2_s")
    rows = [s.rows[0] for s in spec.stages]
    assert [r.kind for r in rows] == ["fused"] * 3 + ["mbconv"] * 3
    assert [r.expand for r in rows] == [1, 4, 4, 4, 6, 6]
    assert [r.stride for r in rows] == [1, 2, 2, 2, 1, 2]
    assert [r.se for r in rows] == [0, 0, 0, 0.25, 0.25, 0.25]
    assert all(r.kernel == 3 for r in rows)


def test_fused_expand1_is_single_conv_with_skip():
    m = get_entry("efficientnetv2_s").build()
    b = m.stages[0][1]  # second block of stage 0: 24 -> 24, stride 1
    assert b.conv_pwl is None and b.has_skip
    assert b.conv_exp.conv.kernel_size == (3, 3) and b.conv_exp.conv.out_channels == 24


def test_cards():
    s = model_card("efficientnetv2_s")
    assert (s.train_size, s.test_size, s.crop_pct) == (300, 384, 1.0)
    assert s.mean == (0.5, 0.5, 0.5) and s.recipe == "efficientnetv2"
    assert (s.dropout, s.drop_path) == (0.2, 0.2)
    extra = dict(s.extra)
    assert (extra["image_size_min"], extra["image_size_max"]) == (128, 300)
    assert (extra["randaugment_min"], extra["randaugment_max"]) == (5, 10)
    assert dict(model_card("efficientnetv2_l").extra)["mixup_max"] == 0.5
    xl = model_card("efficientnetv2_xl")
    assert (xl.test_size, xl.dropout) == (512, 0.4)
    b3 = model_card("efficientnetv2_b3")
    assert (b3.train_size, b3.test_size, b3.dropout) == (240, 300, 0.3)
    assert b3.figures.source and b3.figures.top1 == 82.1
    assert get_spec("efficientnetv2_m").dropout == 0.3


@pytest.mark.parametrize("tag", ["b0", "s"])
def test_logit_parity_with_timm(tag):
    torch.manual_seed(0)
    ref = timm.create_model(f"tf_efficientnetv2_{tag}", pretrained=False).eval()
    randomize_bn(ref)  # so a mis-mapped BN changes the logits
    ours = effnets.create_model(f"efficientnetv2_{tag}", padding="same", bn_eps=1e-3,
                                checkpoint=ref.state_dict()).eval()
    for size in (64, 67):  # 67: odd size, where TF SAME pads asymmetrically
        x = torch.randn(2, 3, size, size)
        with torch.no_grad():
            assert rel_err(ours(x), ref(x)) < 1e-5, size
    # the check is sensitive: symmetric padding on the same weights differs at the odd size
    sym = effnets.create_model(f"efficientnetv2_{tag}", bn_eps=1e-3, checkpoint=ref.state_dict()).eval()
    x = torch.randn(2, 3, 67, 67)
    with torch.no_grad():
        assert rel_err(sym(x), ref(x)) > 1e-3


def test_forward_backward_every_param_gets_grad():
    torch.manual_seed(0)
    # drop_path 0: with batch 2 a block can drop both samples and legitimately get no gradient
    m = effnets.create_model("efficientnetv2_b0", num_classes=10, drop_path=0.0).train()
    out = m(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)
    out.square().mean().backward()
    missing = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing
