"""`make bench`'s report (benchmarks/bench.py): ratios and the issue-5 target lines from a run's figures."""
import importlib.util
import pathlib

import pytest

SPEC = importlib.util.spec_from_file_location(
    "bench", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py")


@pytest.fixture(scope="module")
def bench():
    mod = importlib.util.module_from_spec(SPEC)
    SPEC.loader.exec_module(mod)
    return mod


def _row(impl, batch, eager, compiled=None):
    r = dict(model="efficientnet_b0", impl=impl, size=224, batch=batch, macs_per_image=int(4e8), eager=eager,
             eager_config="channels_last", gflops=0.8 * eager)
    if compiled is not None:
        r["compiled"] = compiled
    return r


def _res(training=True):
    inference = [_row("effnets", 1, 90.0), _row("timm", 1, 50.0), _row("torchvision", 1, 60.0),
                 _row("effnets", 8, 100.0, compiled=100.0), _row("timm", 8, 70.0, compiled=95.0),
                 _row("torchvision", 8, 40.0, compiled=80.0)]
    train = [dict(impl="effnets", config="channels_last", images_per_s=20.0, peak_memory_bytes=800 * 2**20),
             dict(impl="timm", config="channels_last", images_per_s=19.0, peak_memory_bytes=1000 * 2**20),
             dict(impl="torchvision", config="channels_last", images_per_s=15.0, peak_memory_bytes=1200 * 2**20)]
    return dict(machine=dict(cpu="x", threads=2, torch="t", matmul_peak_gflops=300.0, loadavg_start=None,
                             loadavg_end=None), inference=inference, training=train if training else [])


def test_targets_against_the_best_peer_of_each_row(bench):
    lines = bench.targets(_res())
    eager, vs_compiled, compiled, training = lines[1:]
    # b1: 90 / max(50, 60) = 1.50x (the best peer is torchvision, not the first one); b8: 100 / 70 = 1.43x
    assert "reached for none" in eager and "efficientnet_b0 b1 1.500x" in eager and "b8 1.428x" in eager
    # eager 100 vs best compiled 95: 1.05x >= 0.9x; compiled 100 / 95 = 1.05x < 1.1x
    assert "reached for efficientnet_b0 b8 1.052x; not reached for none" in vs_compiled
    assert "reached for none; not reached for efficientnet_b0 b8 1.052x" in compiled
    # training: 20 / 19 = 1.05x (not reached); memory 800 / 1000 = 0.80x against the leaner peer (not reached)
    assert "not reached (1.052x)" in training and "not reached (0.800x)" in training


def test_ratios_are_printed_on_the_side_of_the_target_they_fall(bench):
    # 1.59996x is short of 1.6x and must not print as 1.600x; 0.70004x misses <= 0.7x and must not print 0.700x
    assert bench._rounded(1.59996, up=False) == "1.599" and bench._rounded(1.6, up=False) == "1.600"
    res = _res()
    res["training"][0]["peak_memory_bytes"] = int(0.70004 * 1000 * 2**20)
    assert "not reached (0.701x)" in bench.targets(res)[-1]


def test_report_carries_the_targets_and_skips_training_when_absent(bench):
    res = _res(training=False)
    text = bench.report(res)
    assert "| efficientnet_b0 | 1 | 90.0 | 60.0 (torchvision, channels_last) | **1.50x** |" in text
    assert "Targets (issue 5) in this run:" in text and "training" not in text.split("Targets")[1]


def test_report_says_when_compile_kept_the_eager_model(bench):
    res = _res(training=False)
    res["inference"][3]["compiled_route"] = "eager"
    assert "| 100.0 (eager kept) | 95.0 (timm) |" in bench.report(res)
    res["inference"][3]["compiled_route"] = "compiled"
    assert "| 100.0 | 95.0 (timm) |" in bench.report(res)


def test_gflops_column_against_the_matmul_and_the_fma_peak(bench):
    res = _res(training=False)  # effnets b1: 0.8 * 90 = 72 GFLOP/s; matmul peak 300
    assert "| 72.0 (24%) vs 48.0 |" in bench.report(res)  # a run from before the FMA probe
    res["machine"]["fma_peak_gflops"] = 360.0
    text = bench.report(res)
    assert "| 72.0 (24% / 20%) vs 48.0 |" in text and "FMA units 360.0 GFLOP/s (the matmul at 83%)" in text
