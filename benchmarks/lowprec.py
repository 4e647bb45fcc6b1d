"""Lower precision on CPU, measured on a *trained* efficientnet_b0 (``make bench-lowprec``).

1. Trains efficientnet_b0 (full size, 10 classes) on the built-in ``digits`` data at 224 px
   (greyscale replicated to RGB, ImageNet normalisation) for ``--epochs`` epochs with AdamW, or
   loads ``--checkpoint`` if given (the trained weights are saved to ``--out``/b0_digits.pt).
2. Builds the fp32 ``effnets.optimize`` model, the bf16 one, the mixed bf16 one
   (``dtype="bf16_mixed"``: bf16 operands in the 1x1 convs and the classifier), the int8 one (post-training
   static quantization calibrated on ``--calib`` training images written to a folder, i.e. the
   ``calibration=folder`` path users take; the default and the speed-first choice that keeps
   only the image conv in fp32), effnets' dynamic int8 one (``dtype="int8_dynamic"``: 1x1
   convs in int8, per-pixel activation ranges, no calibration) and the ONNX Runtime ones, fp32
   and int8 (ONNX Runtime's static quantization calibrated on the same folder).
3. Reports, on the held-out ``val`` split (355 images): top-1 of each, top-1 agreement with
   fp32, and throughput at batch 1 and 8 (on the first held-out images, channels-last; the
   median of 3 rounds in which the variants take turns, ONNX Runtime's apart) with speed-up over
   fp32 eager optimized.  timm's and torchvision's efficientnet_b0 run with the
   same trained weights (matched by order and shape, outputs checked equal) as the fp32 peers:
   trained weights, unlike random ones, give squeeze-excite gates so small that the gated
   activations become subnormal floats, which Intel CPUs multiply slowly.

Writes ``lowprec.json`` and ``lowprec.md`` under ``--out`` (default benchmarks/results)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch
import torch.nn.functional as F

import effnets
from effnets.data.datasets import DigitsDataset
from effnets.measure import time_calls
from effnets.optimize import quantize_int8

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def tensors(split: str, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ds = DigitsDataset(split, size)
    x = torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size)
                     for im in ds.images]).float().div(255)
    x = x[:, None].expand(-1, 3, -1, -1)
    return ((x - MEAN) / STD).contiguous(), torch.tensor(ds.targets)


def train(model, x, y, epochs: int, batch: int = 32, lr: float = 2e-3) -> None:
    model.train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(0)
    t0, step = time.perf_counter(), 0
    for ep in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(x[idx].contiguous(memory_format=torch.channels_last)), y[idx],
                                   label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 10 == 0:
                print(f"  epoch {ep + 1} step {step}/{steps} loss {loss.item():.3f} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()


def predict(model, x, batch: int = 32) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([model(x[i:i + batch]).float().argmax(1) for i in range(0, len(x), batch)])


def throughput(model, x: torch.Tensor, iters: int) -> float:
    batch = x.shape[0]
    with torch.inference_mode():
        ts = time_calls(lambda: model(x), torch.device("cpu"), 3, iters)
    return batch / statistics.median(ts)


def with_weights_of(model: torch.nn.Module, peer: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module | None:
    """``peer`` (timm's or torchvision's efficientnet_b0) given ``model``'s weights, matched in order
    and shape (the three share one layout), or None where they do not line up or its outputs
    on the images ``x`` then differ from ``model``'s.  Real images, not noise: on random inputs the
    trained B0's logits reach thousands and float32 itself is 10% from float64 there, so two
    correct implementations (one channels-last after training) differed by more than 1e-4."""
    ours = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    sd = peer.state_dict()
    keys = [k for k in sd if not k.endswith("num_batches_tracked")]
    if len(keys) != len(ours) or any(sd[k].shape != v.shape for k, v in zip(keys, ours)):
        return None
    peer.load_state_dict(dict(zip(keys, ours)), strict=False)
    peer.eval()
    with torch.inference_mode():
        ref = model(x)
        if (peer(x) - ref).abs().max() > 1e-4 * ref.abs().max():
            return None
    return peer.to(memory_format=torch.channels_last)


def peers() -> dict:
    out = {}
    try:
        import timm
        out["fp32 timm (same weights, channels_last)"] = lambda: timm.create_model("efficientnet_b0", num_classes=10)
    except ImportError:
        pass
    try:
        import torchvision
        out["fp32 torchvision (same weights, channels_last)"] = lambda: torchvision.models.efficientnet_b0(num_classes=10)
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=64, help="training images used for int8 calibration")
    ap.add_argument("--iters", type=int, default=6)
    ap.add_argument("--checkpoint", default=None, help="trained weights (skip training)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    size = args.size
    xt, yt = tensors("train", size)
    xv, yv = tensors("val", size)
    model = effnets.create_model("efficientnet_b0", num_classes=10)
    os.makedirs(args.out, exist_ok=True)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True))
    else:
        print(f"training efficientnet_b0 on digits at {size} px for {args.epochs} epochs", flush=True)
        train(model, xt, yt, args.epochs)
        torch.save(model.state_dict(), os.path.join(args.out, "b0_digits.pt"))
    model.eval()

    variants = {"fp32 eager (optimize)": lambda: effnets.optimize(model),
                "bf16 (optimize dtype=bf16)": lambda: effnets.optimize(model, dtype=torch.bfloat16),
                # bf16 operands only in the 1x1 convs and the classifier (AVX512-BF16), fp32 elsewhere
                "bf16 mixed (optimize dtype=bf16_mixed)": lambda: effnets.optimize(model, dtype="bf16_mixed")}
    with tempfile.TemporaryDirectory() as calib_dir:  # the calibration-folder path users take
        from PIL import Image
        for i in range(args.calib):
            arr = ((xt[i, 0] * STD[0, 0] + MEAN[0, 0]).clamp(0, 1) * 255).round().byte().numpy()
            Image.fromarray(arr, mode="L").convert("RGB").save(os.path.join(calib_dir, f"{i:04d}.png"))
        t0 = time.perf_counter()
        int8 = effnets.optimize(model, dtype="int8", calibration=calib_dir)
        int8_s = time.perf_counter() - t0
        variants["int8 (optimize dtype=int8, FX x86)"] = lambda: int8
        # the speed-first choice: only the image conv in fp32 (quantize_int8's docstring)
        first = next(n for n, mod in model.named_modules() if isinstance(mod, torch.nn.Conv2d))
        int8_fast = quantize_int8(model, calib_dir, keep_fp32=[first])
        variants[f"int8, keep_fp32=[{first!r}] (speed first)"] = lambda: int8_fast
        # effnets' own int8 1x1 convs, per-pixel ranges on the fly: nothing to calibrate
        variants["int8 dynamic (optimize dtype=int8_dynamic)"] = lambda: effnets.optimize(model, dtype="int8_dynamic")
        try:
            import onnxruntime  # noqa: F401
            variants["fp32 ONNX Runtime (optimize backend=onnxruntime)"] = (
                lambda: effnets.optimize(model, backend="onnxruntime"))
            ort_int8 = effnets.optimize(model, dtype="int8", backend="onnxruntime", calibration=calib_dir)
            variants["int8 ONNX Runtime (dtype=int8, backend=onnxruntime)"] = lambda: ort_int8
        except ImportError:
            pass
        except effnets.errors.EffnetsError as e:  # e.g. the export failed its equality check
            print(f"  int8 ONNX Runtime: not measured ({e})", flush=True)
    for name, make_peer in peers().items():
        variants[name] = lambda make_peer=make_peer: with_weights_of(model, make_peer(), xv[:4])

    ref = predict(effnets.optimize(model), xv)
    rows, built = [], {}
    for name, make in variants.items():
        try:
            m = make()
        except effnets.errors.EffnetsError as e:  # e.g. the ONNX export failed its equality check
            print(f"  {name}: not measured ({e})", flush=True)
            continue
        if m is None:
            print(f"  {name}: not measured (its layout does not match effnets' weights)", flush=True)
            continue
        pred = predict(m, xv)
        built[name] = m
        rows.append(dict(variant=name, top1=(pred == yv).float().mean().item(),
                         agreement=(pred == ref).float().mean().item()))
    # throughput in turns (3 rounds, each timing every variant), so that a slow minute of a shared
    # host falls on all of them; ONNX Runtime's rows apart, after the others: its worker threads
    # spin for a while after each call and would slow whatever ran next
    xs = {b: xv[:b].contiguous(memory_format=torch.channels_last) for b in (1, 8)}
    times = {name: {b: [] for b in xs} for name in built}
    order = sorted(built, key=lambda n: "ONNX" in n)
    for name_group in ([n for n in order if "ONNX" not in n], [n for n in order if "ONNX" in n]):
        for _ in range(3):
            for name in name_group:
                for b, x in xs.items():
                    times[name][b].append(throughput(built[name], x, args.iters))
    for row in rows:
        row.update({f"b{b}": statistics.median(times[row["variant"]][b]) for b in xs})
        print(f"  {row['variant']:<48} top-1 {row['top1']:.3f}  agreement {row['agreement']:.3f}  "
              f"b1 {row['b1']:.1f} img/s  b8 {row['b8']:.1f} img/s", flush=True)
    base = rows[0]
    lines = ["| efficientnet_b0 trained on digits @%d | val top-1 | agreement with fp32 | batch 1 img/s (x fp32) | "
             "batch 8 img/s (x fp32) |" % size, "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['top1']:.3f} | {r['agreement']:.3f} | {r['b1']:.1f} "
                     f"({r['b1'] / base['b1']:.2f}x) | {r['b8']:.1f} ({r['b8'] / base['b8']:.2f}x) |")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    lines += ["", f"Machine: {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"int8 calibration on {args.calib} images took {int8_s:.1f} s; held-out images: {len(yv)}."]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "lowprec.json"), "w") as f:
        json.dump(dict(rows=rows, size=size, epochs=args.epochs, calib=args.calib, torch=torch.__version__,
                       threads=torch.get_num_threads(), cpu=cpu), f, indent=1)
    with open(os.path.join(args.out, "lowprec.md"), "w") as f:
        f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
