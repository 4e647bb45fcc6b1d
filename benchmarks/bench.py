"""effnets vs timm vs torchvision, side by side, in one process (``make bench``).

Same inputs (seeded), same thread count, same timing procedure (warm-up, then the median of
timed calls) for every implementation, and every configuration of a model and batch timed *in
turns* (5 rounds, each running every contender's share of the calls: ``interleaved_rates``),
so that a slow minute of a shared host falls on all of them alike:

* inference throughput at batch 1 and 8: effnets_b0@224, mobilenet_v3_large@224,
  efficientnetv2_s@300, resnet_rs_50@160.  Peers run in their best plain configuration (eval,
  ``torch.inference_mode``, the faster of NCHW and channels_last, measured); effnets runs
  ``effnets.optimize(model)`` (no compilation).  Separately, everyone under ``torch.compile``
  (Inductor, same options for all: weight freezing) at the batch sizes in ``--compile-batch``,
  and effnets exported to ONNX Runtime (``optimize(model, backend="onnxruntime")``; a different
  runtime, so its own column, not counted as "eager").
* training: efficientnet_b0, batch 16 at 224, SGD-momentum steps (timed in turns too), images/s and peak tensor
  memory (effnets: memory-efficient blocks on, channels_last; peers: the faster layout).
* achieved GFLOP/s of every model (2 x MACs counted on the module x images/s) against the
  machine's measured fp32 peak (the fastest 2048^3 matmul, at the start and the end of the run)
  and against its FMA units' rate (``effnets.kernels.fma_peak``: independent multiply-add chains
  on every thread, the arithmetic limit; a large matmul reaches 80-90% of it).
  The MACs are those of direct convolution; where effnets runs a 3x3 conv by Winograd
  (a quarter of the multiplies) the figure is an *effective* rate and can pass 100%.

Writes ``benchmarks/results/bench.json`` and ``bench.png`` and prints the table with ratios
ours / best peer.  ``--quick``: fewer iterations, no compilation, no training."""
from __future__ import annotations

import argparse
import copy
import functools
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import warnings

import torch

import effnets
from effnets.kernels import fma_peak
from effnets.measure import peak_memory, tensor_bytes, time_calls, training_step
from effnets.profiling import count_macs

MODELS = [  # key, size, effnets name, timm name, torchvision name
    ("efficientnet_b0", 224, "efficientnet_b0", "efficientnet_b0", "efficientnet_b0"),
    ("mobilenet_v3_large", 224, "mobilenet_v3_large", "mobilenetv3_large_100", "mobilenet_v3_large"),
    ("efficientnetv2_s", 300, "efficientnetv2_s", "tf_efficientnetv2_s", "efficientnet_v2_s"),
    ("resnet_rs_50", 160, "resnet_rs_50", "resnetrs50", None),
]


def build(impl: str, name: str) -> torch.nn.Module:
    if impl == "effnets":
        return effnets.create_model(name)
    if impl == "timm":
        import timm
        return timm.create_model(name, pretrained=False)
    import torchvision
    return torchvision.models.get_model(name, weights=None)


def matmul_peak(n: int = 2048, iters: int = 10) -> float:
    """fp32 GFLOP/s of the fastest of ``iters`` 2048^3 matmuls: a peak is what the machine
    can do, so the best call counts (a median on a noisy VM under-states it)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    ts = time_calls(lambda: torch.mm(a, b), torch.device("cpu"), 2, iters)
    return 2 * n ** 3 / min(ts) / 1e9


def macs_of(model, size) -> int:
    model.eval()
    return count_macs(model, torch.zeros(1, 3, size, size))


def take_turns(fns: dict, calls: int, rounds: int, warmup: int) -> dict:
    """Seconds per call of each callable in ``fns`` (name -> callable): ``warmup`` calls each,
    then ``calls`` timed calls each, spread over ``rounds`` rounds in which they take turns, so
    that a slow minute of a shared host falls on all of them alike.  (Measured one after the
    other, two implementations of the same model once differed by 30% on this host while an
    identical model measured twice also moved by 30%.)"""
    times = {name: [] for name in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    for r in range(rounds):
        n = calls // rounds + (1 if r < calls % rounds else 0)
        for name, fn in fns.items():
            times[name] += time_calls(fn, torch.device("cpu"), 0, n)
    return times


def interleaved_rates(contenders: dict, iters: int, rounds: int = 5) -> dict:
    """Inference images/s of each contender (name -> (callable, input)), timed in turns
    (:func:`take_turns`: 3 warm-up calls, ``iters`` timed calls each); the median call counts."""
    with torch.inference_mode():
        times = take_turns({name: functools.partial(fn, x) for name, (fn, x) in contenders.items()}, iters, rounds, 3)
    return {name: contenders[name][1].shape[0] / statistics.median(ts) for name, ts in times.items()}


class CompileTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise CompileTimeout()


def _is_timeout(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, CompileTimeout) or "CompileTimeout" in str(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def compiled(impl, model, size, batch, limit_s: int):
    """(compiled model, compile seconds) under torch.compile; (None, limit) when compiling and the
    first call take longer than ``limit_s`` (Inductor can spend many minutes in its symbolic
    shape analysis on some models, e.g. timm's tf_efficientnetv2_s with dynamic SAME padding)."""
    model.eval()
    t0 = time.perf_counter()
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    use_alarm = limit_s > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        old = signal.signal(signal.SIGALRM, _on_alarm)
        signal.alarm(limit_s)
    try:
        if impl == "effnets":
            cm = effnets.optimize(model, compile=True)
        else:
            cm = torch.compile(model.to(memory_format=torch.channels_last), options={"freezing": True})
        with torch.inference_mode():
            cm(x)
    except Exception as e:  # Dynamo wraps the alarm's exception in its own errors
        if not _is_timeout(e):
            raise
        torch._dynamo.reset()
        return None, float(limit_s)
    finally:
        if use_alarm:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return cm, time.perf_counter() - t0


def train_compare(names: dict, batch: int, size: int, rounds: int = 3, steps_per_round: int = 2,
                  num_classes: int = 1000) -> list[dict]:
    """Training steps (forward, cross-entropy, backward, SGD-momentum step) of each
    implementation (``names``: impl -> model name, None to leave one out) and layout, timed in
    turns like inference (a step takes 1-2 s here, long enough for the host's load to change
    between implementations), then the peak tensor memory of one step each
    (effnets.measure.peak_memory) in the layout that trained fastest.  One dict per
    implementation: impl, images_per_s, peak_memory_bytes, config, step_ms."""
    contenders = {}
    for impl, name in names.items():
        if name is None:
            continue
        for cl in ((True,) if impl == "effnets" else (False, True)):
            torch.manual_seed(0)
            model = build(impl, name).train()
            if cl:
                model = model.to(memory_format=torch.channels_last)
            x = torch.randn(batch, 3, size, size)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            y = torch.randint(0, num_classes, (batch,), generator=torch.Generator().manual_seed(0))
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
            step = training_step(model, x, y, opt)
            contenders[(impl, "channels_last" if cl else "nchw")] = (step, (model, opt, x, y))
    times = take_turns({k: step for k, (step, _) in contenders.items()}, rounds * steps_per_round, rounds, 1)
    out = []
    for impl in names:
        rates = {cfg: batch / statistics.median(times[(i, cfg)]) for (i, cfg) in contenders if i == impl}
        if not rates:
            continue
        cfg = max(rates, key=rates.get)
        step, held = contenders[(impl, cfg)]  # resident: weights, momentum buffers, inputs (as measure_training)
        peak_bytes = peak_memory(step, torch.device("cpu"), tensor_bytes(*held))
        out.append(dict(impl=impl, images_per_s=rates[cfg], peak_memory_bytes=peak_bytes, config=cfg,
                        step_ms=batch / rates[cfg] * 1e3))
    return out


def train_b0(res: dict, batch: int = 16, size: int = 224, rounds: int = 3, steps_per_round: int = 2) -> None:
    """efficientnet_b0 training of every implementation (:func:`train_compare`) into ``res``."""
    names = {"effnets": "efficientnet_b0", "timm": "efficientnet_b0", "torchvision": "efficientnet_b0"}
    for row in train_compare(names, batch, size, rounds, steps_per_round):
        res["training"].append(row)
        print(f"  train b0 b{batch}@{size} {row['impl']:<12} {row['images_per_s']:6.2f} img/s  peak "
              f"{row['peak_memory_bytes'] / 2**20:7.1f} MiB ({row['config']})", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--compile-batch", type=int, nargs="*", default=None,
                    help="batch sizes measured under torch.compile (default 8; none with --quick)")
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--compile-limit", type=int, default=300,
                    help="seconds allowed for one torch.compile (+ first call); 0: no limit")
    ap.add_argument("--no-ort", action="store_true", help="skip the effnets-in-ONNX-Runtime rows")
    ap.add_argument("--models", nargs="*", default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = args.iters or (5 if args.quick else 15)
    cbatches = args.compile_batch if args.compile_batch is not None else ([] if args.quick else [8])
    models = [m for m in MODELS if not args.models or m[0] in args.models]
    t_start = time.perf_counter()
    res = dict(machine=dict(platform=platform.platform(), processor=platform.processor(), python=sys.version.split()[0],
                            torch=torch.__version__, threads=torch.get_num_threads(),
                            cpu=_cpu_name(), loadavg_start=_loadavg()),
               config=dict(quick=args.quick, iters=iters, compile_batches=cbatches), inference=[], training=[])
    peak = matmul_peak()
    res["machine"]["matmul_peak_gflops"] = peak
    fma = fma_peak()
    res["machine"]["fma_peak_gflops"] = fma
    print(f"machine: {res['machine']['cpu']}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"fp32 matmul peak {peak:.1f} GFLOP/s, FMA units {fma or 0:.1f} GFLOP/s, "
          f"load {res['machine']['loadavg_start']}", flush=True)

    for key, size, en, tn, vn in models:
        impls = [("effnets", en), ("timm", tn)] + ([("torchvision", vn)] if vn else [])
        torch.manual_seed(0)  # the same random weights every run (the ONNX export check depends on them)
        built = {impl: build(impl, name).eval() for impl, name in impls}
        macs = {impl: macs_of(m, size) for impl, m in built.items()}
        # every configuration of every implementation, each its own copy (.to() converts in place)
        plain = {"effnets": [("effnets:plain", built["effnets"], True)]}
        for impl in built:
            if impl != "effnets":
                cl_copy = copy.deepcopy(built[impl]).to(memory_format=torch.channels_last)
                plain[impl] = [(f"{impl}:nchw", built[impl], False), (f"{impl}:channels_last", cl_copy, True)]
        ort_model = None
        if not args.no_ort:
            try:
                ort_model = effnets.optimize(built["effnets"], backend="onnxruntime")
            except effnets.errors.EffnetsError as e:
                print(f"  (no ONNX Runtime row: {e})")
        fast = effnets.optimize(built["effnets"])
        built["effnets"].to(memory_format=torch.channels_last)  # the un-optimized model, for eager_plain
        for batch in (1, 8):
            torch.manual_seed(0)
            x = torch.randn(batch, 3, size, size)
            xcl = x.contiguous(memory_format=torch.channels_last)
            contenders = {"effnets:optimize": (fast, xcl)}
            contenders.update({name: (m, xcl if cl else x) for group in plain.values() for name, m, cl in group})
            rates = interleaved_rates(contenders, iters)
            if ort_model is not None:  # a different runtime: reported apart, not in "eager", and timed
                # alone: its worker threads spin after each call and would slow whatever runs next
                rates.update(interleaved_rates({"effnets:onnxruntime": (ort_model, x)}, iters))
            compiled_rates, compile_s, routes = {}, {}, {}
            if batch in cbatches:  # compile each, then time the compiled models in turns too
                cms = {}
                for impl, name in impls:
                    cm, compile_s[impl] = compiled(impl, built[impl] if impl == "effnets" else build(impl, name),
                                                   size, batch, args.compile_limit)
                    if cm is not None:
                        cms[impl] = (cm, xcl)
                compiled_rates = interleaved_rates(cms, iters) if cms else {}
                # optimize(compile=True) keeps the eager model where that timed faster: which ran
                routes = {impl: next(iter(cm.chosen.values()), None) for impl, (cm, _) in cms.items()
                          if hasattr(cm, "chosen")}
                del cms
                torch._dynamo.reset()
            for impl, _ in impls:
                row = dict(model=key, impl=impl, size=size, batch=batch, macs_per_image=macs[impl])
                if impl == "effnets":
                    row["eager_plain"] = rates["effnets:plain"]
                    row["eager"], row["eager_config"] = rates["effnets:optimize"], "effnets.optimize"
                    if "effnets:onnxruntime" in rates:
                        row["onnxruntime"] = rates["effnets:onnxruntime"]
                else:
                    nchw, cl = rates[f"{impl}:nchw"], rates[f"{impl}:channels_last"]
                    row["eager"], row["eager_config"] = (cl, "channels_last") if cl >= nchw else (nchw, "nchw")
                if impl in compile_s:
                    row["compile_s"] = compile_s[impl]
                    if impl in compiled_rates:
                        row["compiled"] = compiled_rates[impl]
                        if routes.get(impl):
                            row["compiled_route"] = routes[impl]
                    else:
                        row["compile_timeout"] = True
                row["gflops"] = 2 * macs[impl] * row["eager"] / 1e9
                res["inference"].append(row)
                print(f"  {key:<19} {impl:<12} b{batch}  eager {row['eager']:8.1f} img/s ({row['eager_config']})"
                      + (f"  onnxruntime {row['onnxruntime']:8.1f} img/s" if "onnxruntime" in row else "")
                      + (f"  compiled {row['compiled']:8.1f} img/s (compile {row['compile_s']:.0f} s"
                         + (", eager kept" if _kept_eager(row) else "") + ")"
                         if "compiled" in row else "")
                      + (f"  compile timed out (> {row['compile_s']:.0f} s)" if row.get("compile_timeout") else "")
                      + f"  {row['gflops']:.1f} GFLOP/s", flush=True)

    if not args.quick and not args.no_train:
        train_b0(res)

    res["machine"]["loadavg_end"] = _loadavg()
    # measured again at the end: the peak is the better of the two (a busy moment lowers one)
    res["machine"]["matmul_peak_gflops"] = max(peak, matmul_peak())
    res["machine"]["fma_peak_gflops"] = max(fma or 0.0, fma_peak() or 0.0) or None
    res["wall_s"] = time.perf_counter() - t_start
    table = report(res)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(table + "\n")
    chart(res, os.path.join(args.out, "bench.png"))
    print(f"wrote {args.out}/bench.json, bench.md, bench.png in {res['wall_s']:.0f} s")
    return 0


def _kept_eager(row: dict) -> bool:
    """True where optimize(compile=True) timed the eager model faster and kept it for this shape."""
    return row.get("compiled_route") == "eager"


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _rows(res):
    """(model, batch), effnets' row and the peers' rows, for every model and batch of the run, in
    MODELS order."""
    order = [m[0] for m in MODELS]
    keys = sorted({(r["model"], r["batch"]) for r in res["inference"]},
                  key=lambda k: (order.index(k[0]) if k[0] in order else len(order), k))
    for key in keys:
        rows = [r for r in res["inference"] if (r["model"], r["batch"]) == key]
        yield key, next(r for r in rows if r["impl"] == "effnets"), [r for r in rows if r["impl"] != "effnets"]


def _best(peers: list, key: str) -> dict | None:
    """The peer row with the highest ``key`` figure (images/s), or None where no peer has one."""
    return max((r for r in peers if key in r), key=lambda r: r[key], default=None)


def report(res) -> str:
    lines = ["| model | batch | effnets eager (img/s) | best eager peer | ours / best | effnets compiled | "
             "best compiled peer | ours / best | ours eager / best compiled peer | "
             "GFLOP/s, direct-conv count (% of matmul peak / of FMA peak) | "
             "effnets in ONNX Runtime (img/s) / best eager peer |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    peak = res["machine"]["matmul_peak_gflops"]
    fma = res["machine"].get("fma_peak_gflops")
    for (model, batch), ours, peers in _rows(res):
        bp, bc = _best(peers, "eager"), _best(peers, "compiled")
        c_ours = ours.get("compiled")
        lines.append(
            f"| {model} | {batch} | {ours['eager']:.1f} | {bp['eager']:.1f} ({bp['impl']}, {bp['eager_config']}) | "
            f"**{ours['eager'] / bp['eager']:.2f}x** | "
            + (f"{c_ours:.1f}" + (" (eager kept)" if _kept_eager(ours) else "") if c_ours
               else "timed out" if ours.get("compile_timeout") else "-") + " | "
            + (f"{bc['compiled']:.1f} ({bc['impl']})" if bc else "-")
            + "".join(f"; {r['impl']} timed out" for r in peers if r.get("compile_timeout")) + " | "
            + (f"**{c_ours / bc['compiled']:.2f}x**" if bc and c_ours else "-") + " | "
            + (f"{ours['eager'] / bc['compiled']:.2f}x" if bc else "-") + " | "
            + f"{ours['gflops']:.1f} ({100 * ours['gflops'] / peak:.0f}%"
            + (f" / {100 * ours['gflops'] / fma:.0f}%" if fma else "") + f") vs {bp['gflops']:.1f} | "
            + (f"{ours['onnxruntime']:.1f} / {ours['onnxruntime'] / bp['eager']:.2f}x |" if "onnxruntime" in ours
               else "- |"))
    if res["training"]:
        tr = {r["impl"]: r for r in res["training"]}
        o = tr["effnets"]
        peers = [r for k, r in tr.items() if k != "effnets"]
        fast = max(peers, key=lambda r: r["images_per_s"])
        lean = min(peers, key=lambda r: r["peak_memory_bytes"])
        lines += ["", "| training efficientnet_b0, batch 16 @ 224 | images/s | peak memory (MiB) |", "|---|---|---|"]
        for k, r in tr.items():
            lines.append(f"| {k} ({r['config']}) | {r['images_per_s']:.2f} | {r['peak_memory_bytes'] / 2**20:.0f} |")
        lines.append(f"| **ours / best peer** | **{o['images_per_s'] / fast['images_per_s']:.2f}x** (vs {fast['impl']}) | "
                     f"**{o['peak_memory_bytes'] / lean['peak_memory_bytes']:.2f}x** (vs {lean['impl']}) |")
    lines += ["", *targets(res)]
    m = res["machine"]
    fma = m.get("fma_peak_gflops")
    lines += ["", f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}; fp32 matmul peak "
              f"{m['matmul_peak_gflops']:.1f} GFLOP/s"
              + (f", FMA units {fma:.1f} GFLOP/s (the matmul at {100 * m['matmul_peak_gflops'] / fma:.0f}%)" if fma else "")
              + f"; load average at start {m['loadavg_start']}, end {m['loadavg_end']}.",
              "GFLOP/s counts direct-convolution FLOPs; effnets runs some 3x3 convs by Winograd F(4x4, 3x3), "
              "which needs fewer, so its figure is an effective rate and can pass 100% of the matmul peak."]
    return "\n".join(lines)


# issue 5's targets that one `make bench` run can check (int8's is make bench-lowprec's)
TARGETS = (("eager", "eager", 1.6, "eager optimized >= 1.6x the best eager peer"),
           ("eager", "compiled", 0.9, "eager optimized >= 0.9x the best compiled peer"),
           ("compiled", "compiled", 1.1, "compiled >= 1.1x the best compiled peer"))


def _rounded(ratio: float, up: bool) -> str:
    """The ratio to three decimals, rounded away from the target's side (down for "at least",
    up for "at most"): 1.59996x printed as 1.600x would read as reaching 1.6x."""
    return f"{(math.ceil if up else math.floor)(ratio * 1000) / 1000:.3f}"


def targets(res) -> list[str]:
    """One line per target: where this run reached it and where not, with the ratios."""
    lines = ["Targets (issue 5) in this run:"]
    for ours_key, peer_key, goal, text in TARGETS:
        hit, miss = [], []
        for (model, batch), ours, peers in _rows(res):
            best = _best(peers, peer_key)
            if ours_key not in ours or best is None:
                continue
            ratio = ours[ours_key] / best[peer_key]
            (hit if ratio >= goal else miss).append(f"{model} b{batch} {_rounded(ratio, up=False)}x")
        if hit or miss:
            lines.append(f"- {text}: reached for {', '.join(hit) or 'none'}; "
                         f"not reached for {', '.join(miss) or 'none'}")
    if res["training"]:
        tr = {r["impl"]: r for r in res["training"]}
        peers = [r for k, r in tr.items() if k != "effnets"]
        speed = tr["effnets"]["images_per_s"] / max(r["images_per_s"] for r in peers)
        memory = tr["effnets"]["peak_memory_bytes"] / min(r["peak_memory_bytes"] for r in peers)
        lines.append(f"- training >= 1.1x the faster peer: {'reached' if speed >= 1.1 else 'not reached'} "
                     f"({_rounded(speed, up=False)}x); peak memory <= 0.7x the lower peer: "
                     f"{'reached' if memory <= 0.7 else 'not reached'} ({_rounded(memory, up=True)}x)")
    return lines


def chart(res, path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib missing: no chart")
        return
    keys = [k for k, _, _ in _rows(res)]
    impls = ["effnets", "timm", "torchvision"]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(keys)), 4.5))
    w = 0.8 / (len(impls) + 2)
    for i, impl in enumerate(impls):
        vals = []
        for k in keys:
            r = next((r for r in res["inference"] if (r["model"], r["batch"]) == k and r["impl"] == impl), None)
            vals.append(r["eager"] if r else 0)
        ax.bar([j + i * w for j in range(len(keys))], vals, w, label=f"{impl} eager")
    vals = [next((r.get("compiled", 0) for r in res["inference"] if (r["model"], r["batch"]) == k
                  and r["impl"] == "effnets"), 0) for k in keys]
    ax.bar([j + len(impls) * w for j in range(len(keys))], vals, w, label="effnets compiled")
    vals = [next((r.get("onnxruntime", 0) for r in res["inference"] if (r["model"], r["batch"]) == k
                  and r["impl"] == "effnets"), 0) for k in keys]
    if any(vals):
        ax.bar([j + (len(impls) + 1) * w for j in range(len(keys))], vals, w, label="effnets in ONNX Runtime")
    ax.set_xticks([j + 1.5 * w for j in range(len(keys))])
    ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in keys], fontsize=8)
    ax.set_ylabel("images / s (higher is better)")
    ax.set_title(f"Inference throughput, {res['machine']['cpu']}, {res['machine']['threads']} threads")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
