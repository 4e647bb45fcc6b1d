"""effnets.optimize against timm and torchvision on the library's other architectures (``make bench-survey``).

``make bench`` holds four models to issue 5's targets; users run the rest of the zoo too.  This
script times, for each architecture that timm or torchvision also builds, effnets'
``optimize(model)`` (eager, no compilation) against each peer's faster plain configuration (NCHW
or channels_last, eval, ``torch.inference_mode``) at batch 1 and 8, the contenders of a model and
batch taking turns (``bench.interleaved_rates``: 5 rounds, median call).  Before timing it checks
that the peer is the same network: the same parameter count within 1% (a row that fails says so
and is not timed).  Multiply-adds are reported beside it but not compared: a hook counter sees a
peer's functional calls (torchvision's ``nn.MultiheadAttention`` projections, fused attention)
no better than it sees them in effnets.

``--train``: also training (batch 8; forward, cross-entropy, backward, SGD-momentum step; the
implementations and layouts in turns, ``bench.train_compare``) of the models in ``TRAIN_MODELS``:
images/s against the faster peer and peak tensor memory against the leaner one (effnets with its
default memory-efficient blocks).

Prints a table of images/s and ours / best peer and writes ``survey.json`` and ``survey.md``
under ``--out`` (default ``benchmarks/results``).  Random weights, seeded: the timing does not
depend on them except through subnormal numbers, which trained squeeze-excite gates can make
(``benchmarks/lowprec.py`` measures a trained model)."""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (model builders, MAC counting and the interleaved timing of make bench)

import effnets  # noqa: E402

MODELS = [  # key, size, effnets name, timm name, torchvision name
    ("mobilenet_v1", 224, "mobilenet_v1", "mobilenetv1_100", None),
    ("mobilenet_v2", 224, "mobilenet_v2", "mobilenetv2_100", "mobilenet_v2"),
    ("mobilenet_v3_small", 224, "mobilenet_v3_small", "mobilenetv3_small_100", "mobilenet_v3_small"),
    ("mnasnet_b1", 224, "mnasnet_b1", "mnasnet_100", "mnasnet1_0"),
    ("mnasnet_a1", 224, "mnasnet_a1", "semnasnet_100", None),
    ("efficientnet_b3", 300, "efficientnet_b3", "efficientnet_b3", "efficientnet_b3"),
    ("efficientnetv2_b0", 224, "efficientnetv2_b0", "tf_efficientnetv2_b0", None),
    ("resnet_rs_101", 192, "resnet_rs_101", "resnetrs101", None),
    ("coatnet_0", 224, "coatnet_0", "coatnet_0_224", None),
    ("vit_small_16", 224, "vit_small_16", "vit_small_patch16_224", None),
    ("vit_base_16", 224, "vit_base_16", "vit_base_patch16_224", "vit_b_16"),
]


TRAIN_MODELS = [  # key, size, effnets name, timm name, torchvision name
    ("mobilenet_v2", 224, "mobilenet_v2", "mobilenetv2_100", "mobilenet_v2"),
    ("mobilenet_v3_large", 224, "mobilenet_v3_large", "mobilenetv3_large_100", "mobilenet_v3_large"),
    ("efficientnetv2_s", 224, "efficientnetv2_s", "tf_efficientnetv2_s", "efficientnet_v2_s"),
    ("resnet_rs_50", 160, "resnet_rs_50", "resnetrs50", None),
    ("vit_small_16", 224, "vit_small_16", "vit_small_patch16_224", None),
    ("coatnet_0", 224, "coatnet_0", "coatnet_0_224", None),
]


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def same_network(ours: torch.nn.Module, peer: torch.nn.Module) -> str | None:
    """None where ``peer`` has the parameters of ``ours`` (within 1%), else what differs."""
    pa, pb = params(ours), params(peer)
    if abs(pa - pb) > 0.01 * pa:
        return f"parameters differ: {pa / 1e6:.2f}M vs {pb / 1e6:.2f}M"
    return None


def survey(models, iters: int) -> list[dict]:
    rows = []
    for key, size, en, tn, vn in models:
        torch.manual_seed(0)
        ours = bench.build("effnets", en).eval()
        peers = {}
        for impl, name in (("timm", tn), ("torchvision", vn)):
            if name is None:
                continue
            try:
                peer = bench.build(impl, name).eval()
            except Exception as e:  # a peer version without this model: say so, go on
                print(f"  {key}: no {impl} {name} ({type(e).__name__}: {e})", flush=True)
                continue
            why = same_network(ours, peer)
            if why:
                print(f"  {key}: {impl} {name} is not the same network ({why}); not timed", flush=True)
                rows.append(dict(model=key, size=size, peer=f"{impl}:{name}", skipped=why))
                continue
            peers[impl] = peer
        if not peers:
            continue
        fast = effnets.optimize(ours)
        macs = bench.macs_of(ours, size)
        for batch in (1, 8):
            torch.manual_seed(0)
            x = torch.randn(batch, 3, size, size)
            xcl = x.contiguous(memory_format=torch.channels_last)
            contenders = {"effnets:optimize": (fast, xcl)}
            for impl, m in peers.items():
                contenders[f"{impl}:nchw"] = (m, x)
                contenders[f"{impl}:channels_last"] = (copy.deepcopy(m).to(memory_format=torch.channels_last), xcl)
            rates = bench.interleaved_rates(contenders, iters)
            best_peer = max((k for k in rates if not k.startswith("effnets")), key=rates.get)
            row = dict(model=key, size=size, batch=batch, macs=macs, ours=rates["effnets:optimize"],
                       best_peer=best_peer, peer=rates[best_peer],
                       ratio=rates["effnets:optimize"] / rates[best_peer],
                       rates={k: round(v, 2) for k, v in rates.items()})
            rows.append(row)
            print(f"  {key} @{size} b{batch}: effnets {row['ours']:.1f} img/s, best peer {best_peer} "
                  f"{row['peer']:.1f} -> {row['ratio']:.2f}x", flush=True)
    return rows


def train_survey(models, batch: int = 8) -> list[dict]:
    rows = []
    for key, size, en, tn, vn in models:
        names = {"effnets": en, "timm": tn, "torchvision": vn}
        ours = bench.build("effnets", en)
        for impl in ("timm", "torchvision"):  # the same network check as for inference
            why = same_network(ours, bench.build(impl, names[impl])) if names[impl] else None
            if why:
                print(f"  train {key}: {impl} {names[impl]} is not the same network ({why}); not timed", flush=True)
                names[impl] = None
        if not (names["timm"] or names["torchvision"]):
            continue
        res = {r["impl"]: r for r in bench.train_compare(names, batch, size, rounds=2, steps_per_round=2)}
        peers = [r for impl, r in res.items() if impl != "effnets"]
        fast, lean = max(peers, key=lambda r: r["images_per_s"]), min(peers, key=lambda r: r["peak_memory_bytes"])
        ours = res["effnets"]
        row = dict(model=key, size=size, batch=batch, ours=ours, peers=peers,
                   speed=ours["images_per_s"] / fast["images_per_s"], fast_peer=fast["impl"],
                   memory=ours["peak_memory_bytes"] / lean["peak_memory_bytes"], lean_peer=lean["impl"])
        rows.append(row)
        print(f"  train {key} @{size} b{batch}: effnets {ours['images_per_s']:.2f} img/s, "
              f"{ours['peak_memory_bytes'] / 2**20:.0f} MiB; speed {row['speed']:.2f}x {fast['impl']}, "
              f"memory {row['memory']:.2f}x {lean['impl']}", flush=True)
    return rows


def train_report(rows: list[dict]) -> str:
    lines = ["", "Training (SGD-momentum steps, peers in their faster layout):", "",
             "| model | batch | effnets img/s | faster peer img/s | speed | effnets MiB | leaner peer MiB | memory |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fast = next(p for p in r["peers"] if p["impl"] == r["fast_peer"])
        lean = next(p for p in r["peers"] if p["impl"] == r["lean_peer"])
        lines.append(f"| {r['model']} @{r['size']} | {r['batch']} | {r['ours']['images_per_s']:.2f} | "
                     f"{fast['images_per_s']:.2f} ({r['fast_peer']}) | {r['speed']:.2f}x | "
                     f"{r['ours']['peak_memory_bytes'] / 2**20:.0f} | {lean['peak_memory_bytes'] / 2**20:.0f} "
                     f"({r['lean_peer']}) | {r['memory']:.2f}x |")
    return "\n".join(lines)


def report(rows: list[dict], machine: dict) -> str:
    lines = [f"effnets.optimize (eager) vs the best plain peer, {machine['threads']} threads, {machine['cpu']}, "
             f"torch {machine['torch']}", "",
             "| model | GMACs | batch | effnets img/s | best peer (config) | peer img/s | ours / best peer |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['model']} @{r['size']} | - | - | - | {r['peer']} | - | not the same network: {r['skipped']} |")
        else:
            lines.append(f"| {r['model']} @{r['size']} | {r['macs'] / 1e9:.2f} | {r['batch']} | {r['ours']:.1f} | {r['best_peer']} | "
                         f"{r['peer']:.1f} | {r['ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="keys of MODELS (default: all)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--train", action="store_true", help="also training speed and memory (TRAIN_MODELS, batch 8)")
    ap.add_argument("--train-only", action="store_true", help="training only (writes survey_train.{md,json})")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    unknown = set(args.models or []) - {m[0] for m in MODELS + TRAIN_MODELS}
    if unknown:
        ap.error(f"unknown model keys {sorted(unknown)}; choose among {sorted({m[0] for m in MODELS + TRAIN_MODELS})}")
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = dict(cpu=bench._cpu_name(), platform=platform.platform(), torch=torch.__version__,
                   threads=torch.get_num_threads(), loadavg_start=bench._loadavg())
    t0 = time.perf_counter()
    rows = [] if args.train_only else survey([m for m in MODELS if not args.models or m[0] in args.models], args.iters)
    train_rows = (train_survey([m for m in TRAIN_MODELS if not args.models or m[0] in args.models])
                  if args.train or args.train_only else [])
    machine["seconds"] = round(time.perf_counter() - t0)
    text = (report(rows, machine) if rows else f"{machine['threads']} threads, {machine['cpu']}, torch {machine['torch']}\n"
            ) + (train_report(train_rows) if train_rows else "")
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = "survey_train" if args.train_only else "survey"  # a training-only run keeps the inference files
    with open(os.path.join(args.out, f"{stem}.json"), "w") as f:
        json.dump(dict(machine=machine, rows=rows, training=train_rows), f, indent=1)
    with open(os.path.join(args.out, f"{stem}.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
