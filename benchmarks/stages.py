"""Where an optimized model's time goes, stage by stage (not a test: prints figures).

``python benchmarks/stages.py efficientnetv2_s --size 300 --batch 1``: the model as
``effnets.optimize`` makes it, each top-level part (stem, every stage, head) timed inside whole
forward passes (best of 5 rounds of 5 forwards), beside its multiply-adds (counted on the
original model) and the rate they run at against the machine's FMA peak
(``kernels.fma_peak``). Timers wrap the parts' ``forward`` only, so the fused paths inside
each stage run as in the plain optimized model; Winograd convs do fewer multiplies than counted
here (direct-conv count), so their stages can pass 100%.
"""
from __future__ import annotations

import argparse
import time

import torch

import effnets
from effnets import kernels
from effnets.profiling import count_macs


def parts(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Top-level children, a ``stages`` container opened into its stages."""
    out = []
    for name, child in model.named_children():
        if name == "stages":
            out += [(f"stages.{i}", s) for i, s in enumerate(child)]
        else:
            out.append((name, child))
    return out


def stage_macs(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of each part on the input it gets in one forward of ``model``."""
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda m, a, n=n: inputs.setdefault(n, a[0]))
               for n, m in parts(model)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: count_macs(m, inputs[n]) for n, m in parts(model) if n in inputs}


def stage_times(model: torch.nn.Module, x: torch.Tensor, rounds: int = 5, calls: int = 5) -> tuple[float, dict]:
    """Seconds per forward of the whole model and of each part, from the fastest round."""
    spent: dict[str, float] = {}
    for name, m in parts(model):
        def timed(*a, _f=m.forward, _n=name, **k):
            t = time.perf_counter()
            y = _f(*a, **k)
            spent[_n] = spent.get(_n, 0.0) + time.perf_counter() - t
            return y
        m.forward = timed
    best, best_parts = float("inf"), {}
    with torch.inference_mode():
        for _ in range(calls):
            model(x)
        for _ in range(rounds):
            spent.clear()
            t = time.perf_counter()
            for _ in range(calls):
                model(x)
            total = (time.perf_counter() - t) / calls
            if total < best:
                best, best_parts = total, {n: s / calls for n, s in spent.items()}
    return best, best_parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = effnets.create_model(args.model).eval()
    x = torch.randn(args.batch, 3, args.size, args.size).contiguous(memory_format=torch.channels_last)
    macs = stage_macs(model, x)
    total, times = stage_times(effnets.optimize(model), x)
    peak = kernels.fma_peak()
    print(f"{args.model} @{args.size} batch {args.batch}: {total * 1e3:.1f} ms per forward"
          + (f", FMA peak {peak:.1f} GFLOP/s" if peak else ""))
    print(f"{'part':<12} {'ms':>8} {'share':>7} {'GMAC':>8} {'GFLOP/s':>8} {'% peak':>7}")
    for name, s in times.items():
        rate = 2 * macs.get(name, 0) / s / 1e9 if s > 0 else 0.0
        pct = f"{100 * rate / peak:6.0f}%" if peak else "      -"
        print(f"{name:<12} {s * 1e3:8.2f} {100 * s / total:6.1f}% {macs.get(name, 0) / 1e9:8.3f} {rate:8.1f} {pct}")


if __name__ == "__main__":
    main()
