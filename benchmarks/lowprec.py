"""Lower precision on CPU, measured on a *trained* efficientnet_b0 (``make bench-lowprec``).

1. Trains efficientnet_b0 (full size, 10 classes) on the built-in ``digits`` data at 224 px
   (greyscale replicated to RGB, ImageNet normalisation) for ``--epochs`` epochs with AdamW, or
   loads ``--checkpoint`` if given (the trained weights are saved to ``--out``/b0_digits.pt).
2. Builds the fp32 ``effnets.optimize`` model, the bf16 one, the int8 one (post-training
   static quantization calibrated on ``--calib`` training images written to a folder, i.e. the
   ``calibration=folder`` path users take) and the ONNX Runtime ones, fp32 and int8 (ONNX
   Runtime's static quantization calibrated on the same folder).
3. Reports, on the held-out ``val`` split (355 images): top-1 of each, top-1 agreement with
   fp32, and throughput at batch 1 and 8 with speed-up over fp32 eager optimized.

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


def throughput(model, size: int, batch: int, iters: int) -> float:
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        ts = time_calls(lambda: model(x), torch.device("cpu"), 3, iters)
    return batch / statistics.median(ts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--calib", type=int, default=64, help="training images used for int8 calibration")
    ap.add_argument("--iters", type=int, default=10)
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
                "bf16 (optimize dtype=bf16)": lambda: effnets.optimize(model, dtype=torch.bfloat16)}
    with tempfile.TemporaryDirectory() as calib_dir:  # the calibration-folder path users take
        from PIL import Image
        for i in range(args.calib):
            arr = ((xt[i, 0] * STD[0, 0] + MEAN[0, 0]).clamp(0, 1) * 255).round().byte().numpy()
            Image.fromarray(arr, mode="L").convert("RGB").save(os.path.join(calib_dir, f"{i:04d}.png"))
        t0 = time.perf_counter()
        int8 = effnets.optimize(model, dtype="int8", calibration=calib_dir)
        int8_s = time.perf_counter() - t0
        variants["int8 (optimize dtype=int8, FX x86)"] = lambda: int8
        try:
            import onnxruntime  # noqa: F401
            ort_int8 = effnets.optimize(model, dtype="int8", backend="onnxruntime", calibration=calib_dir)
            variants["fp32 ONNX Runtime (optimize backend=onnxruntime)"] = (
                lambda: effnets.optimize(model, backend="onnxruntime"))
            variants["int8 ONNX Runtime (dtype=int8, backend=onnxruntime)"] = lambda: ort_int8
        except ImportError:
            pass

    ref = predict(effnets.optimize(model), xv)
    rows = []
    for name, make in variants.items():
        try:
            m = make()
        except effnets.errors.EffnetsError as e:  # e.g. the ONNX export failed its equality check
            print(f"  {name}: not measured ({e})", flush=True)
            continue
        pred = predict(m, xv)
        row = dict(variant=name, top1=(pred == yv).float().mean().item(), agreement=(pred == ref).float().mean().item(),
                   b1=throughput(m, size, 1, args.iters), b8=throughput(m, size, 8, args.iters))
        rows.append(row)
        print(f"  {name:<48} top-1 {row['top1']:.3f}  agreement {row['agreement']:.3f}  "
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
