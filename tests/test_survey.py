"""`make bench-survey` (benchmarks/survey.py): which peers count as the same network, and the report."""
import importlib.util
import pathlib
import sys

import pytest
import torch

import effnets

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def survey():
    sys.path.insert(0, str(BENCH_DIR))  # survey imports bench.py as a sibling
    try:
        spec = importlib.util.spec_from_file_location("survey", BENCH_DIR / "survey.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(BENCH_DIR))


def test_a_peer_with_other_parameters_is_not_compared(survey):
    """The same architecture passes (timm's MobileNetV2-1.0 against ours, checked against the
    parameters' count, not the names); a wider one (1.4x) does not, and the reason names both
    counts."""
    timm = pytest.importorskip("timm")
    ours = effnets.create_model("mobilenet_v2")
    assert survey.same_network(ours, timm.create_model("mobilenetv2_100")) is None
    why = survey.same_network(ours, timm.create_model("mobilenetv2_140"))
    assert why is not None and why.startswith("parameters differ: 3.50M vs 6.11M")


def test_every_listed_model_exists_and_the_report_shows_ratios_and_skips(survey):
    names = set(effnets.list_models())
    assert all(en in names for _, _, en, _, _ in survey.MODELS)
    rows = [dict(model="mobilenet_v2", size=224, batch=8, macs=int(3.0e8), ours=200.0, best_peer="timm:channels_last",
                 peer=100.0, ratio=2.0),
            dict(model="vit_base_16", size=224, peer="torchvision:vit_b_16", skipped="parameters differ: 1M vs 2M")]
    text = survey.report(rows, dict(threads=2, cpu="x", torch="t"))
    assert "| mobilenet_v2 @224 | 0.30 | 8 | 200.0 | timm:channels_last | 100.0 | 2.00x |" in text
    assert "not the same network: parameters differ: 1M vs 2M" in text
