"""int8_dynamic against fp32 on a *trained* model other than B0 (``make bench-lowprec`` covers B0).

Trains ``--model`` (10 classes) on the built-in ``digits`` data at ``--size`` with
``benchmarks/lowprec.py``'s data and training loop (or loads ``--checkpoint``), then reports the
top-1 of the fp32 ``effnets.optimize`` model and of ``effnets.optimize(model, dtype="int8_dynamic")``
on the 355 held-out images, their top-1 agreement, and the throughput of both at batch 1 and 8
(median of 3 rounds in which the two take turns).

    .venv/bin/python benchmarks/int8_dynamic.py --model resnet_rs_50 --size 160 --epochs 3
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lowprec  # noqa: E402  (the data, training loop and timing of the B0 benchmark)

import effnets  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet_rs_50")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--checkpoint", default=None, help="trained weights (skip training); else saved here")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    xt, yt = lowprec.tensors("train", args.size)
    xv, yv = lowprec.tensors("val", args.size)
    model = effnets.create_model(args.model, num_classes=10)
    if args.checkpoint and os.path.exists(args.checkpoint):
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    else:
        t0 = time.perf_counter()
        lowprec.train(model, xt, yt, args.epochs)
        print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.0f} s", flush=True)
        if args.checkpoint:
            torch.save(model.state_dict(), args.checkpoint)
    model.eval()
    fp32, q = effnets.optimize(model), effnets.optimize(model, dtype="int8_dynamic")
    pf, pq = lowprec.predict(fp32, xv), lowprec.predict(q, xv)
    same = int((pf == pq).sum())
    print(f"{args.model} @{args.size}, {torch.get_num_threads()} threads: fp32 top-1 {(pf == yv).float().mean():.3f}, "
          f"int8_dynamic top-1 {(pq == yv).float().mean():.3f}, agreement {same / len(yv):.4f} ({same}/{len(yv)}), "
          f"{len(q.effnets_optimized['int8_layers'])} int8 layers ({q.effnets_optimized['int8_code']})", flush=True)
    for b in (1, 8):
        x = xv[:b].contiguous(memory_format=torch.channels_last)
        rates: dict[str, list[float]] = {"fp32": [], "int8_dynamic": []}
        for _ in range(3):
            rates["fp32"].append(lowprec.throughput(fp32, x, 10 if b == 8 else 20))
            rates["int8_dynamic"].append(lowprec.throughput(q, x, 10 if b == 8 else 20))
        a, c = statistics.median(rates["fp32"]), statistics.median(rates["int8_dynamic"])
        print(f"  batch {b}: fp32 {a:.1f} img/s, int8_dynamic {c:.1f} img/s ({c / a:.2f}x)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
