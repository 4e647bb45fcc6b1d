"""Scaling lab: any phi for any stage-based base, MACs budgets, rules, and the law table,
checked against independent counts (torch.utils.flop_counter) and the official B1-B7 table."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

import effnets
from effnets.cli import main
from effnets.scaling.law import law_table, official_table
from effnets.scaling.rules import fit_budget, scale_model, scaled_macs


def oracle_macs(name):
    """MACs by torch's own counter, on the meta device (no weights)."""
    with torch.device("meta"):
        model = effnets.create_model(name).eval()
        size = model.card.test_size
        with FlopCounterMode(display=False) as fc:
            model(torch.zeros(1, 3, size, size))
    return fc.get_total_flops() // 2


@pytest.mark.parametrize("base,budget", [("efficientnet_b0", 0.1e9), ("mobilenet_v2", 1e9), ("efficientnet_b0", 20e9)])
def test_budget_fits_within_10_percent(base, budget):
    scaled, macs = fit_budget(base, budget)
    assert 0.9 * budget <= macs <= budget
    assert oracle_macs(scaled.name) == macs  # the name rebuilds the same network, counted independently


@pytest.mark.slow
@pytest.mark.parametrize("base", ["efficientnet_b0", "mobilenet_v2"])
@pytest.mark.parametrize("budget", [0.1e9, 0.2e9, 0.5e9, 1e9, 2e9, 5e9, 10e9, 20e9])
def test_budget_grid(base, budget):
    scaled, macs = fit_budget(base, budget)
    assert 0.9 * budget <= macs <= budget


def test_budget_too_small_is_a_clear_error():
    with pytest.raises(effnets.ConfigError, match="over the budget"):
        fit_budget("efficientnet_b0", 1e3)


def test_law_matches_independent_count():
    rows = law_table("efficientnet_b0", phis=(-2, 0, 1.5))
    for row in rows:
        name = scale_model("efficientnet_b0", float(row.phi)).name
        assert row.macs == oracle_macs(name)
    assert rows[1].measured_growth == 1.0
    neg = rows[0]
    assert neg.predicted_growth == pytest.approx((1.2 * 1.1 ** 2 * 1.15 ** 2) ** -2)
    assert neg.deviation > 0.2  # floors and rounding keep small nets larger than predicted


def test_official_table_reproduced():
    # measured GMACs of B1-B7 at their resolutions (reference-numbers.md §1c)
    measured = {1: 0.687, 2: 0.994, 3: 1.827, 4: 4.394, 5: 10.266, 6: 19.068, 7: 37.746}
    rows = official_table()
    for r in rows:
        assert r.official_macs / 1e9 == pytest.approx(measured[r.phi], rel=2e-3)
        assert r.formula[0] == pytest.approx(1.1 ** r.phi) and r.formula[1] == pytest.approx(1.2 ** r.phi)
    assert rows[-1].official == (2.0, 3.1, 600)


def test_scaled_name_round_trip():
    s = scale_model("mobilenet_v2", -1.5)
    assert s.name == "mobilenet_v2@phi=-1.5"
    assert effnets.get_spec(s.name) == s.spec
    model = effnets.create_model(s.name, num_classes=4)
    assert model.card.test_size == s.resolution
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


def test_b0_phi1_is_b2_table():
    # w = 1.1, d = 1.2 are exactly B2's released coefficients
    assert effnets.get_spec("efficientnet_b0@phi=1").stages == effnets.get_spec("efficientnet_b2").stages


def test_v2_rule_caps_size_and_deepens_late_stages():
    s = scale_model("efficientnet_b0", 6, rule="v2")
    c = scale_model("efficientnet_b0", 6)
    assert s.resolution == 480 and c.resolution > 480
    v2 = [st.num_blocks for st in s.spec.stages]
    cp = [st.num_blocks for st in c.spec.stages]
    assert v2[0] < cp[0] and v2[-2] > cp[-2]


def test_resnet_rs_rule_regimes():
    long = scale_model("resnet_rs_50", 2, rule="resnet-rs", regime="long")
    short = scale_model("resnet_rs_50", 2, rule="resnet-rs", regime="short")
    comp = scale_model("resnet_rs_50", 2)
    assert long.width == 1.0 and long.depth > comp.depth
    assert short.depth == 1.0 and short.width > comp.width
    assert long.resolution < comp.resolution  # resolution grows slowly
    assert long.resolution == short.resolution


def test_efficientnet_rs_slower_resolution_past_b3():
    assert scale_model("efficientnet_b0", 2, rule="efficientnet-rs").resolution == scale_model("efficientnet_b0", 2).resolution
    assert scale_model("efficientnet_b0", 6, rule="efficientnet-rs").resolution < scale_model("efficientnet_b0", 6).resolution


def test_bad_inputs():
    with pytest.raises(effnets.ConfigError, match="range"):
        scale_model("efficientnet_b0", 50)
    with pytest.raises(effnets.ConfigError, match="rule"):
        scale_model("efficientnet_b0", 1, rule="magic")
    with pytest.raises(effnets.ConfigError, match="stage table"):
        scale_model("vit_tiny_16", 1)
    with pytest.raises(effnets.ConfigError, match="needs phi"):
        effnets.create_model("efficientnet_b0@rule=v2")


@settings(max_examples=15, deadline=None)
@given(phi=st.floats(-4, 3), rule=st.sampled_from(["compound", "v2", "resnet-rs", "efficientnet-rs"]))
def test_any_phi_gives_a_valid_network(phi, rule):
    s = scale_model("mobilenet_v2", phi, rule=rule)
    assert all(stage.out_chs % 8 == 0 and stage.num_blocks >= 1 for stage in s.spec.stages)
    assert s.resolution % 4 == 0 and s.resolution >= 4
    assert scaled_macs(s) > 0


def test_cli_scale(capsys):
    assert main(["scale", "efficientnet_b0", "--phi", "-1"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_b0@phi=-1" in out and "total blocks" in out
    assert main(["scale", "efficientnet_b0", "--phi", "40"]) == 2
    assert "range" in capsys.readouterr().err
    assert main(["scale", "mobilenet_v2", "--budget-macs", "0.2G"]) == 0
    assert "of the budget" in capsys.readouterr().out
    assert main(["scale", "mobilenet_v2", "--budget-macs", "lots"]) == 2
