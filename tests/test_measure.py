"""effnets.measure and `effnets profile --measure`: correct bookkeeping (no timing asserts)."""
import torch

import effnets
from effnets.cli import main
from effnets.measure import measure, measure_inference, measure_training, peak_memory, tensor_bytes


def test_peak_memory_counts_a_known_allocation():
    def fn():
        a = torch.empty(1 << 20)  # 4 MiB
        b = torch.empty(1 << 19)  # 2 MiB while a is alive
        del a, b
        torch.empty(1 << 18)

    peak = peak_memory(fn, torch.device("cpu"))
    assert 6 * 2**20 <= peak < 7 * 2**20


def test_tensor_bytes_counts_shared_storage_once():
    t = torch.zeros(1000)
    assert tensor_bytes(t, t[10:], t.view(10, 100)) == 4000


def test_measure_inference_and_training_figures():
    model = effnets.create_model("mobilenet_v1", num_classes=10, width=0.25)
    inf = measure_inference(model, 64, 2, iters=2, warmup=1)
    assert inf.kind == "inference" and inf.latency_ms > 0
    assert abs(inf.images_per_s - 2 / (inf.latency_ms / 1e3)) < 1e-6 * inf.images_per_s
    assert inf.latency_p10_ms <= inf.latency_ms <= inf.latency_p90_ms
    params = sum(p.numel() * 4 for p in model.parameters())
    assert inf.peak_memory_bytes > params  # weights + input + activations
    tr = measure_training(model, 64, 4, iters=2, warmup=1)
    # training keeps activations, gradients and momentum: more than inference
    assert tr.peak_memory_bytes > inf.peak_memory_bytes + params
    assert tr.as_dict()["input_size"] == [64, 64]


def test_measure_by_name_rectangular():
    ms = measure("mobilenet_v1", input_size=(64, 48), batch_size=1, iters=1, warmup=1, width=0.25, num_classes=5)
    assert [m.kind for m in ms] == ["inference", "training"]
    assert ms[0].input_size == (64, 48)


def test_cli_profile_measure(capsys):
    assert main(["profile", "mobilenet_v3_small", "--size", "64", "--measure", "--iters", "2"]) == 0
    out = capsys.readouterr().out
    assert "MACs" in out and "measured inference" in out and "measured training" in out and "MiB" in out


def test_measure_optimized_variants_are_separate_inference_rows():
    ms = measure("mobilenet_v1", input_size=64, batch_size=2, iters=1, warmup=1, width=0.25, num_classes=5,
                 training=False, optimized=["fp32", "int8_dynamic", "bf16_mixed"])
    assert [m.kind for m in ms] == ["inference", "inference, optimize fp32", "inference, optimize int8_dynamic",
                                    "inference, optimize bf16_mixed"]
    assert all(m.batch_size == 2 and m.input_size == (64, 64) and m.images_per_s > 0 for m in ms)


def test_measure_optimized_rejects_unknown_variants_and_gpu():
    import pytest
    from effnets.errors import ConfigError
    with pytest.raises(ConfigError, match="unknown variant 'int4'"):
        measure("mobilenet_v1", input_size=32, iters=1, warmup=1, width=0.25, optimized=["int4"])
    with pytest.raises(ConfigError, match="CPU"):
        measure("mobilenet_v1", input_size=32, iters=1, warmup=1, width=0.25, optimized=["fp32"], device="meta")


def test_cli_profile_measure_optimized(capsys):
    assert main(["profile", "mobilenet_v3_small", "--size", "64", "--measure", "--iters", "1",
                 "--optimized", "int8_dynamic"]) == 0
    out = capsys.readouterr().out
    assert "measured inference, optimize int8_dynamic" in out and "measured training" in out
    assert main(["profile", "mobilenet_v3_small", "--optimized", "fp32"]) != 0  # needs --measure


def test_peak_memory_leaves_no_profiler_chatter_on_stderr(capfd):
    import sys
    peak_memory(lambda: torch.empty(1 << 10), torch.device("cpu"))
    peak_memory(lambda: print("from fn", file=sys.stderr, flush=True), torch.device("cpu"))
    err = capfd.readouterr().err
    assert "profiler_st" not in err and "USDT" not in err
    assert "from fn" in err  # the measured call's own output is not hidden
