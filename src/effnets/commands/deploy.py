"""`effnets export`, `effnets predict`, `effnets convert`."""
from __future__ import annotations

import argparse
import json
import sys


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        val = json.loads(v)
    except json.JSONDecodeError:
        val = v
    return k, val


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX / TorchScript / ExportedProgram (verified)")
    p.add_argument("name", nargs="?", default=None, help="registered model name (optional with a weight folder)")
    p.add_argument("--checkpoint", default=None, help="weights file or folder (effnets, timm or torchvision layout)")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "exported-program"])
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--size", type=int, default=None, help="example input size (default: the model's)")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--static", action="store_true", help="fixed batch and input size (ONNX / ExportedProgram)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--dynamo", action="store_true", help="ONNX via torch.export (slower) instead of tracing")
    p.add_argument("--tol", type=float, default=1e-4, help="max relative error against PyTorch")
    p.add_argument("--no-verify", action="store_true")
    p.add_argument("--set", dest="overrides", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="model override, e.g. --set padding=same --set width=0.5")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("predict", help="top-k classes for an image or a folder of images")
    p.add_argument("name", nargs="?", default=None, help="registered model name (optional with a weight folder)")
    p.add_argument("images", help="image file or folder")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.add_argument("--cam", default=None, metavar="DIR", help="write a Grad-CAM overlay PNG per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("convert", help="timm / torchvision / Keras weights -> effnets weight folder")
    p.add_argument("--from", dest="source", required=True, choices=["timm", "torchvision", "keras"])
    p.add_argument("src", help="source weights file or folder")
    p.add_argument("name", nargs="?", default=None, help="effnets model name (guessed from the source when known)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--source-model", default=None, help="source architecture name (timm / torchvision) for parity")
    p.add_argument("--labels", default=None, help="text file with one class name per line")
    p.add_argument("--set", dest="overrides", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-parity", action="store_true")
    p.add_argument("--all-layers", action="store_true", help="print every layer of the parity report")
    p.set_defaults(func=cmd_convert)


def _model(args, **extra):
    from .. import create_model
    kw = dict(getattr(args, "overrides", []) or [])
    kw.update(extra)
    if getattr(args, "num_classes", None) is not None:
        kw["num_classes"] = args.num_classes
    return create_model(args.name, checkpoint=args.checkpoint, **kw)


def cmd_export(args) -> int:
    from ..export import export_model
    model = _model(args)
    kw = dict(input_size=args.size, verify=not args.no_verify)
    if args.format == "onnx":
        kw.update(dynamic=not args.static, opset=args.opset, dynamo=args.dynamo, tol=args.tol)
    elif args.format == "exported-program":
        kw.update(dynamic=not args.static, tol=args.tol)
    else:
        kw.update(tol=args.tol)
    rep = export_model(model, args.out, args.format, **kw)
    print(f"wrote {rep['path']} ({args.format}, {getattr(model, 'name', '')}, example input {rep['input_size']})")
    if "sizes" in rep:
        sizes = ", ".join(f"{k}: {v:.1e}" for k, v in rep["sizes"].items())
        runner = "onnxruntime" if args.format == "onnx" else "reloaded file"
        print(f"verified with {runner} vs PyTorch, relative error (tol {args.tol:g}): {sizes}")
        if "float64_floor" in rep:
            print(f"  over tol, but within float32 precision: against a float64 PyTorch run onnxruntime is "
                  f"{rep['ort_vs_float64']:.1e} off and PyTorch float32 itself {rep['float64_floor']:.1e} "
                  "(untrained weights give large logits)")
    return 0


def cmd_predict(args) -> int:
    from ..export.predict import format_prediction, list_images, predict_files
    if args.checkpoint is None:
        print("effnets predict: warning: no --checkpoint, the model has random weights", file=sys.stderr)
    model = _model(args)
    preds = predict_files(model, list_images(args.images), topk=args.topk, cam_dir=args.cam)
    if args.json:
        print(json.dumps({"model": getattr(model, "name", None), "predictions": [p.as_dict() for p in preds]},
                         indent=2))
    else:
        for p in preds:
            print(format_prediction(p))
    bad = sum(p.error is not None for p in preds)
    if bad:
        print(f"{bad} of {len(preds)} file(s) skipped", file=sys.stderr)
    return 0 if bad < len(preds) else 1


def cmd_convert(args) -> int:
    from ..weights.convert import convert, format_parity
    labels = None
    if args.labels:
        with open(args.labels) as f:
            labels = [line.strip() for line in f if line.strip()]
    res = convert(args.source, args.src, args.out, args.name, source_model=args.source_model,
                  overrides=dict(args.overrides), labels=labels, parity=not args.no_parity)
    print(f"wrote {res['folder']}: {res['name']} overrides {res['overrides'] or '{}'}")
    if res.get("parity"):
        print(format_parity(res["parity"], None if args.all_layers else 12))
    elif res.get("parity_note"):
        print(res["parity_note"])
    return 0
