"""What the C library's allocator costs, for effnets, timm and torchvision alike (``make bench-alloc``).

PyTorch does not cache CPU memory, and glibc hands large freed blocks back to the kernel, so
every reuse page-faults (``effnets.allocator`` explains).  This script measures, for each
implementation, efficientnet_b0 inference at batch 8 and training at batch 16 (224 px) under

* ``default``: glibc as it comes;
* ``keep``: ``effnets.allocator.keep_freed_memory()`` called first (= ``MALLOC_MMAP_MAX_=0
  MALLOC_TRIM_THRESHOLD_=2147483647``), what ``effnets train`` does for itself;

each measurement in a fresh process (the setting lasts for the process), the settings and
implementations interleaved round by round so that a noisy host moves all of them alike.
It prints images/s (median over rounds), minor page faults per call, the process's peak
resident memory (what keeping freed memory costs) and the speed-up of ``keep`` over
``default`` per implementation.  Inference: effnets ``optimize(model)``, peers
eval + channels_last + inference_mode; training: SGD-momentum steps, channels_last for all.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

IMPLS = ("effnets", "timm", "torchvision")
SETTINGS = ("default", "keep")


def worker(impl: str, task: str, setting: str, threads: int) -> dict:
    """One measurement in this process; returns images/s and page faults per timed call."""
    if setting == "keep":
        from effnets.allocator import keep_freed_memory
        keep_freed_memory()
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench import build
    import effnets
    from effnets.measure import time_calls, training_step
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(impl, "efficientnet_b0")
    if task == "infer":
        batch = 8
        model = effnets.optimize(model.eval()) if impl == "effnets" else \
            model.eval().to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            fn, warmup, iters = (lambda: model(x)), 3, 8
            return _timed(fn, warmup, iters, batch, time_calls)
    batch = 16
    model = model.train().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return _timed(training_step(model, x, y, opt), 2, 4, batch, time_calls)


def _timed(fn, warmup, iters, batch, time_calls) -> dict:
    import torch
    for _ in range(warmup):
        fn()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ts = time_calls(fn, torch.device("cpu"), 0, iters)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / iters
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    return {"images_per_s": batch / statistics.median(ts), "faults_per_call": faults, "peak_rss_mib": peak_rss}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tasks", default="infer,train", help="comma list of infer, train")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "TASK", "SETTING"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads)))
        return 0
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in ("infer", "train")]
    if bad:
        p.error(f"unknown task(s) {bad}: use infer, train")
    runs: dict[tuple, list[dict]] = {}
    t0 = time.perf_counter()
    for r in range(args.rounds):
        for task in tasks:
            for setting in SETTINGS:
                for impl in IMPLS:
                    cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(args.threads),
                           "--worker", impl, task, setting]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode != 0:
                        print(f"  {impl} {task} {setting}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                        return 1
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    runs.setdefault((task, impl, setting), []).append(res)
                    print(f"  round {r + 1} {task:<5} {impl:<12} {setting:<8} {res['images_per_s']:7.2f} img/s  "
                          f"{res['faults_per_call']:9.0f} page faults/call  peak RSS {res['peak_rss_mib']:6.0f} MiB",
                          flush=True)
    lines = ["| task | implementation | default (img/s) | keep (img/s) | keep / default | page faults per call, "
             "default -> keep | peak resident MiB, default -> keep |", "|---|---|---|---|---|---|---|"]
    summary = []
    for task in tasks:
        for impl in IMPLS:
            d = [x["images_per_s"] for x in runs[(task, impl, "default")]]
            k = [x["images_per_s"] for x in runs[(task, impl, "keep")]]
            fd = statistics.median(x["faults_per_call"] for x in runs[(task, impl, "default")])
            fk = statistics.median(x["faults_per_call"] for x in runs[(task, impl, "keep")])
            rd = statistics.median(x["peak_rss_mib"] for x in runs[(task, impl, "default")])
            rk = statistics.median(x["peak_rss_mib"] for x in runs[(task, impl, "keep")])
            md, mk = statistics.median(d), statistics.median(k)
            summary.append(dict(task=task, impl=impl, default=d, keep=k, faults_default=fd, faults_keep=fk,
                                peak_rss_mib_default=rd, peak_rss_mib_keep=rk))
            label = "infer b0 b8@224" if task == "infer" else "train b0 b16@224"
            lines.append(f"| {label} | {impl} | {md:.2f} | {mk:.2f} | {mk / md:.2f}x | {fd:.0f} -> {fk:.0f} | "
                         f"{rd:.0f} -> {rk:.0f} |")
    table = "\n".join(lines)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "allocator.json"), "w") as f:
        json.dump(dict(rounds=args.rounds, threads=args.threads, wall_s=time.perf_counter() - t0,
                       loadavg=os.getloadavg(), results=summary), f, indent=1)
    with open(os.path.join(args.out, "allocator.md"), "w") as f:
        f.write(table + "\n")
    print(f"wrote {args.out}/allocator.json, allocator.md in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
