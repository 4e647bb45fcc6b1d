"""Scaling rules against the official tables (reference-numbers.md §1a) and properties."""
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

import effnets
from effnets.scaling import compound, make_divisible, round_repeats, scaled_resolution

# tensorflow/tpu efficientnet_builder.py coefficients, rounded with round_filters/round_repeats;
# the derived rows agree with timm tf_efficientnet_* (reference-numbers.md §1a).
GOLDEN = {
    "b0": (32, (16, 24, 40, 80, 112, 192, 320), 1280, (1, 2, 2, 3, 3, 4, 1)),
    "b1": (32, (16, 24, 40, 80, 112, 192, 320), 1280, (2, 3, 3, 4, 4, 5, 2)),
    "b2": (32, (16, 24, 48, 88, 120, 208, 352), 1408, (2, 3, 3, 4, 4, 5, 2)),
    "b3": (40, (24, 32, 48, 96, 136, 232, 384), 1536, (2, 3, 3, 5, 5, 6, 2)),
    "b4": (48, (24, 32, 56, 112, 160, 272, 448), 1792, (2, 4, 4, 6, 6, 8, 2)),
    "b5": (48, (24, 40, 64, 128, 176, 304, 512), 2048, (3, 5, 5, 7, 7, 9, 3)),
    "b6": (56, (32, 40, 72, 144, 200, 344, 576), 2304, (3, 6, 6, 8, 8, 11, 3)),
    "b7": (64, (32, 48, 80, 160, 224, 384, 640), 2560, (4, 7, 7, 10, 10, 13, 4)),
    "b8": (72, (32, 56, 88, 176, 248, 424, 704), 2816, (4, 8, 8, 11, 11, 15, 4)),
    "l2": (136, (72, 104, 176, 344, 480, 824, 1376), 5504, (6, 11, 11, 16, 16, 22, 6)),
}


def table(spec):
    return (spec.stem.out_chs, tuple(s.out_chs for s in spec.stages), spec.head.chs,
            tuple(s.num_blocks for s in spec.stages))


@pytest.mark.parametrize("tag", sorted(GOLDEN))
def test_efficientnet_stage_tables(tag):
    assert table(effnets.get_spec(f"efficientnet_{tag}")) == GOLDEN[tag]


def test_overrides_give_b2_table_from_b0():
    assert table(effnets.get_spec("efficientnet_b0", width=1.1, depth=1.2)) == GOLDEN["b2"]
    model = effnets.create_model("efficientnet_b0", width=1.1, depth=1.2)
    assert sum(p.numel() for p in model.parameters()) == 9_109_994  # timm/torchvision B2


def test_mobilenet_v2_width_14():
    # timm mobilenetv2_140 (reference-numbers.md §3b): 6,108,776 params; head stays max(1280, scaled)
    model = effnets.create_model("mobilenet_v2", width=1.4)
    assert sum(p.numel() for p in model.parameters()) == 6_108_776
    assert effnets.get_spec("mobilenet_v2", width=1.4).head.chs == 1792
    assert effnets.get_spec("mobilenet_v2", width=0.5).head.chs == 1280


def test_make_divisible_rules():
    assert make_divisible(32 * 1.1) == 32  # 35.2 -> 32 (within 10%)
    assert make_divisible(16 * 0.35) == 8  # never below the divisor
    assert make_divisible(41) == 40
    assert make_divisible(44) == 48  # ties round up
    assert make_divisible(71.0, 16) == 64  # 64 >= 0.9 * 71: no bump

def test_round_limit_switch():
    # 92 * 0.5 = 46 -> nearest multiple of 32 is 32, 30% below: the 10% rule bumps it to 64
    assert make_divisible(46, 32, round_limit=0.9) == 64
    assert make_divisible(46, 32, round_limit=0.0) == 32


def test_round_repeats():
    assert round_repeats(3, 1.1) == 4
    assert round_repeats(1, 0.1) == 1
    assert round_repeats(4, 0.5, "round") == 2
    with pytest.raises(ValueError):
        round_repeats(2, 1.0, "floor")


@pytest.mark.parametrize("phi", [-2, -0.5, 0, 1, 1.5, 4])
def test_compound(phi):
    c = compound(phi)
    assert c.depth == pytest.approx(1.2 ** phi)
    assert c.width == pytest.approx(1.1 ** phi)
    assert c.resolution == pytest.approx(1.15 ** phi)
    assert c.flops_factor == pytest.approx((1.2 * 1.1 ** 2 * 1.15 ** 2) ** phi)
    assert c.flops_factor == pytest.approx(2 ** phi, rel=0.1 * max(1, abs(phi)))


def test_compound_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        compound(1, alpha=0.9)
    with pytest.raises(ValueError, match="phi"):
        compound(float("nan"))


def test_scaled_resolution():
    assert scaled_resolution(224, 1.0) == 224
    assert scaled_resolution(224, compound(1).resolution) == 256


def test_scale_negative_phi_builds():
    c = compound(-2)
    model = effnets.create_model("efficientnet_b0", width=c.width, depth=c.depth)
    spec = effnets.get_spec("efficientnet_b0", width=c.width, depth=c.depth)
    assert all(s.out_chs % 8 == 0 and s.out_chs >= 8 for s in spec.stages)
    assert sum(p.numel() for p in model.parameters()) < 5_288_548


@given(v=st.floats(1, 10_000), divisor=st.sampled_from([1, 4, 8, 16, 32]))
def test_make_divisible_properties(v, divisor):
    r = make_divisible(v, divisor)
    assert r % divisor == 0 and r >= divisor
    assert r >= 0.9 * v - 1e-9
    assert r <= v + divisor  # never more than one step up


@given(w=st.floats(0.1, 4.0), d=st.floats(0.1, 4.0))
def test_scale_properties(w, d):
    spec = effnets.get_spec("efficientnet_b0", width=w, depth=d)
    base = effnets.get_spec("efficientnet_b0")
    for s, b in zip(spec.stages, base.stages):
        assert s.num_blocks == max(1, math.ceil(b.num_blocks * d))
        assert s.out_chs % 8 == 0
    assert spec.concrete and spec.width == 1.0


def test_spec_prints_table():
    text = str(effnets.get_spec("efficientnet_b3"))
    assert "mbconv" in text and "1536" in text and "total blocks: 26" in text
