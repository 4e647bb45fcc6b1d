"""`effnets train` and `effnets eval`."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model with a recipe",
                       description="Train a model with a recipe (shipped: efficientnet, resnet_rs, efficientnetv2, "
                                   "demo; or a YAML file).  Under torchrun it trains with DDP.  Bad image files "
                                   "are skipped and listed in <out>/bad_files.txt.  SIGTERM writes a checkpoint and "
                                   "exits 0 (continue with --resume).  Exit codes: 0 done or preempted, 2 usage "
                                   "error, 1 the run failed (non-finite loss, disk full).")
    p.add_argument("name", nargs="?", default=None, help="model name (default: the recipe's `model`)")
    p.add_argument("--recipe", default="demo", help="recipe name or YAML path (default: demo)")
    p.add_argument("--data", default=None, help="digits, synthetic, or a folder with train/ and val/")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe setting, e.g. --set epochs=5 --set progressive.stages=3")
    p.add_argument("--out", default=None, help="output folder (default: runs/<recipe>_<model>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                   help="continue from CHECKPOINT (default: <out>/last.safetensors)")
    p.add_argument("--teacher", default=None, help="teacher model name for pseudo-labels")
    p.add_argument("--teacher-checkpoint", default=None, help="teacher weights (.safetensors)")
    p.add_argument("--unlabeled", default=None, help="folder of unlabelled images for the teacher to label")
    p.add_argument("--pseudo", choices=("hard", "soft"), default=None, help="pseudo-label kind (default: soft)")
    p.add_argument("--finetune", action="store_true",
                   help="fine-tune from --checkpoint: new classifier when the class count differs")
    p.add_argument("--checkpoint", default=None, help="initial weights for --finetune (any layout create_model reads)")
    p.add_argument("--layer-decay", type=float, default=None, help="--finetune: layer-wise LR decay (e.g. 0.75)")
    p.add_argument("--freeze-bn", action="store_true", help="--finetune: keep BN statistics fixed")
    p.add_argument("--freeze-stages", type=int, default=None, help="--finetune: freeze the stem and first N stages")
    p.add_argument("--show-recipe", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-keep-freed-memory", dest="keep_freed_memory", action="store_false",
                   help="leave glibc's malloc as it is (default: keep freed memory for reuse, which saves the page "
                        "faults of re-allocated large buffers; see effnets.allocator)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint with the model card's preprocessing")
    p.add_argument("name", help="model name")
    p.add_argument("--checkpoint", required=True, help="a checkpoint from effnets train, or safetensors weights")
    p.add_argument("--data", required=True, help="digits, synthetic, a folder with val/, or an image folder")
    p.add_argument("--ema", action="store_true", help="use the EMA weights")
    p.add_argument("--size", type=int, default=None, help="input size (default: the run's eval size or the card's)")
    p.add_argument("--crop-pct", type=float, default=None, help="centre-crop fraction (default: the card's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--max-bad-fraction", type=float, default=0.5,
                   help="stop when more than this fraction of the image files are bad (default 0.5); bad files "
                        "are skipped and listed")
    p.set_defaults(func=cmd_eval)


def cmd_train(args) -> int:
    from ..train.recipe import dump_recipe, load_recipe, parse_assignment
    # --set strings and the teacher flags go through the same validation, in order
    overrides = dict(parse_assignment(o) for o in args.overrides)
    for key, val in (("teacher", args.teacher), ("teacher_checkpoint", args.teacher_checkpoint),
                     ("unlabeled", args.unlabeled), ("pseudo_labels", args.pseudo)):
        if val is not None:
            overrides[key] = val
    if args.finetune or args.checkpoint:
        from ..errors import ConfigError
        if not (args.finetune and args.checkpoint):
            raise ConfigError("fine-tuning needs both --finetune and --checkpoint C")
        overrides["init_checkpoint"] = args.checkpoint
        for key, val in (("layer_decay", args.layer_decay), ("freeze_stages", args.freeze_stages)):
            if val is not None:
                overrides[key] = val
        if args.freeze_bn:
            overrides["freeze_bn"] = True
    recipe = load_recipe(args.recipe, overrides)
    if args.data is not None:
        recipe.data = args.data
    if args.show_recipe:
        print(dump_recipe(recipe), end="")
        return 0
    if args.keep_freed_memory:  # this process only trains: reuse freed buffers (effnets.allocator)
        from ..allocator import keep_freed_memory
        keep_freed_memory()
    from ..train import fit
    result = fit(args.name, recipe, out_dir=args.out, resume=args.resume, progress=not args.no_progress)
    return 0 if result is not None else 1


def cmd_eval(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .. import create_model
    from ..data.datasets import Transformed, build_eval_set, collate_skip_none
    from ..data.transforms import eval_transform
    from ..errors import ConfigError
    from ..train.checkpoint import load_model_state, model_state, read_checkpoint
    from ..train.loop import evaluate

    if args.size is not None and args.size < 8:
        raise ConfigError(f"--size must be >= 8, got {args.size}")
    if args.batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {args.batch}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if not 0 <= args.max_bad_fraction <= 1:
        raise ConfigError(f"--max-bad-fraction must be in [0, 1], got {args.max_bad_fraction}")
    tensors, info = read_checkpoint(args.checkpoint)
    meta = info.get("meta", {})
    if not isinstance(meta, dict):
        meta = {}
    classes = meta.get("classes")
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        classes = None
    ds = build_eval_set(args.data, max_bad_fraction=args.max_bad_fraction, classes=classes)
    bad_log = None
    if hasattr(ds, "bad_log"):  # loader workers report files that fail to decode here
        fd, bad_log = tempfile.mkstemp(prefix="effnets-eval-bad-", suffix=".log")
        os.close(fd)
        ds.bad_log = bad_log
    classes = getattr(ds, "classes", None)
    num_classes = meta.get("num_classes") or (len(classes) if classes else None)
    if num_classes is None:
        raise ConfigError("cannot tell the number of classes: the checkpoint has no run metadata")
    if meta.get("model") not in (None, args.name):
        raise ConfigError(f"checkpoint was trained as {meta['model']!r}, not {args.name!r}")
    model = create_model(args.name, num_classes=num_classes, **meta.get("model_args", {}))
    load_model_state(model, model_state(tensors, args.ema, args.checkpoint), args.checkpoint, args.name)
    card = model.card
    resolved = meta.get("resolved", {})
    size = args.size or resolved.get("eval_size") or card.test_size
    crop = args.crop_pct if args.crop_pct is not None else resolved.get("crop_pct", card.crop_pct)
    interp = resolved.get("interpolation", card.interpolation)
    tf = eval_transform(size, crop, interp, card.mean, card.std)
    loader = DataLoader(Transformed(ds, tf), batch_size=args.batch, num_workers=args.workers,
                        collate_fn=collate_skip_none)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    r = evaluate(model.to(device), loader, device, num_classes)
    print(f"{args.name} {'EMA' if args.ema else 'raw'} weights on {args.data} ({r['n']} images) at {size}px, "
          f"crop {crop:g}, {interp}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")
    bad = ds.bad_files() if hasattr(ds, "bad_files") else []
    if bad_log and os.path.exists(bad_log):
        os.unlink(bad_log)
    if bad:
        print(f"skipped {len(bad)} bad image files (not counted):")
        for p, reason in bad:
            print(f"  {p}: {reason}")
    sys.stdout.flush()
    return 0
