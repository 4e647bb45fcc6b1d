"""``fit``: recipe -> data -> model -> optimiser/schedule/EMA/progressive stages -> checkpoints,
logs, plot, summary.  The same code runs on CPU and CUDA, in one process or under torchrun.

Faults (issue 8):

* bad image files are skipped and listed (``<out>/bad_files.txt``, the log, ``FitResult.bad_files``);
  more than ``max_bad_fraction`` of a split stops the run with a DataError;
* SIGTERM (preemption) makes the trainer finish the current step, write ``last.safetensors`` and
  return (``completed=False, preempted=True``; ``effnets train`` exits 0); ``--resume`` continues
  exactly.  ``resume=True`` with no ``last.safetensors`` yet (killed before the first
  checkpoint) starts the run from scratch;
* a NaN/Inf loss stops the run (``nan_policy: stop``; TrainingError naming the step and the last
  good checkpoint, which is kept) or skips the update (``nan_policy: skip``) up to
  ``max_skipped_steps``;
* a failed checkpoint write (disk full) stops the run with a TrainingError; the previous
  checkpoint is intact (writes are atomic).

Testing hook (not for normal use): ``EFFNETS_TEST_INJECT_NAN="3,7=inf"`` multiplies the loss of
optimizer steps 3 and 7 (1-based) by NaN / Inf."""
from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import yaml
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from ..data.datasets import Transformed, build_splits, check_bad_fraction, collate_skip_none
from ..data.mix import MixUpCutMix, soft_target_cross_entropy, soft_targets
from ..data.transforms import TrainTransform, eval_transform
from ..errors import ConfigError, TrainingError
from . import checkpoint as ckpt
from .distributed import (DistInfo, ResumableSampler, all_reduce_sum, average_bn_stats, barrier, convert_sync_bn,
                          init_distributed)
from .ema import ModelEma
from .logs import Progress, RunLog, plot_history
from .optim import build_optimizer
from .progressive import from_recipe
from .recipe import Recipe, dump_recipe, load_recipe
from .schedule import build_schedule


@dataclass
class FitResult:
    out_dir: str
    best_metric: str
    best_top1: float
    best_epoch: int
    final_top1: float | None
    final_ema_top1: float | None
    train_time_s: float
    images_per_s: float
    global_step: int
    completed: bool
    checkpoint: str
    best_checkpoint: str
    log_csv: str
    plot: str | None
    config: str
    history: list = field(default_factory=list)
    model: nn.Module | None = None
    bad_files: list = field(default_factory=list)   # (split, path, reason) of skipped image files
    preempted: bool = False                          # stopped by SIGTERM (checkpoint written)
    skipped_steps: int = 0                           # updates skipped for a non-finite loss

    def summary(self) -> str:
        lines = [f"best {self.best_metric} {self.best_top1:.2f}% (epoch {self.best_epoch})"]
        fin = f"final val top-1 {self.final_top1:.2f}%" if self.final_top1 is not None else "no evaluation yet"
        if self.final_ema_top1 is not None:
            fin += f", EMA {self.final_ema_top1:.2f}%"
        lines.append(fin)
        lines.append(f"training time {self.train_time_s:.1f} s, {self.images_per_s:.0f} images/s, "
                     f"{self.global_step} steps" + ("" if self.completed else " (stopped early: resume with --resume)"))
        lines.append(f"checkpoint  {self.checkpoint}")
        lines.append(f"best        {self.best_checkpoint}")
        lines.append(f"config      {self.config}")
        if self.bad_files:
            lines.append(f"bad files   {len(self.bad_files)} skipped, listed in "
                         f"{os.path.join(self.out_dir, 'bad_files.txt')}")
        if self.skipped_steps:
            lines.append(f"skipped     {self.skipped_steps} steps with a non-finite loss")
        lines.append(f"log         {self.log_csv}")
        if self.plot:
            lines.append(f"plot        {self.plot}")
        return "\n".join(lines)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if dtype is torch.float16 and device.type != "cuda":
        raise ConfigError("precision fp16 needs CUDA; use bf16 on CPU")
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: nn.Module, loader, device, num_classes: int, info: DistInfo | None = None,
             precision: str = "fp32", channels_last: bool = False) -> dict:
    """Top-1, top-5 (%) and mean cross-entropy over the loader, summed across ranks."""
    was_training = model.training
    model.eval()
    loss_sum = c1 = c5 = n = 0.0
    k = min(5, num_classes)
    for batch in loader:
        if batch is None:  # every image of the batch was a bad file (collate_skip_none)
            continue
        x, y = batch
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(precision, device):
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        topk = logits.topk(k, dim=-1).indices
        c1 += (topk[:, 0] == y).sum().item()
        c5 += (topk == y[:, None]).any(dim=-1).sum().item()
        n += y.numel()
    if info is not None:
        loss_sum, c1, c5, n = all_reduce_sum([loss_sum, c1, c5, n], info)
    model.train(was_training)
    n = max(n, 1)
    return {"top1": 100.0 * c1 / n, "top5": 100.0 * c5 / n, "loss": loss_sum / n, "n": int(n)}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_model(model, recipe: Recipe, num_classes: int):
    from .. import create_model
    if isinstance(model, nn.Module):
        if getattr(model, "num_classes", num_classes) != num_classes and hasattr(model, "reset_classifier"):
            model.reset_classifier(num_classes)
        return model, getattr(model, "name", type(model).__name__), getattr(model, "card", None)
    name = model or recipe.model
    if not name:
        raise ConfigError("no model named: pass one (effnets train NAME) or set `model:` in the recipe")
    m = create_model(name, num_classes=num_classes, checkpoint=recipe.init_checkpoint, **recipe.model_args)
    if recipe.init_checkpoint:  # fine-tuning: the head was re-initialised if the class count differs
        from ..finetune import prepare_finetune
        # layer ids: 0 = stem, i + 1 = stage i; freeze_stages N freezes the stem and stages 0..N-1
        prepare_finetune(m, freeze_bn=recipe.freeze_bn,
                         freeze_stages=recipe.freeze_stages + 1 if recipe.freeze_stages else 0)
    return m, name, m.card


def _loader(ds, sampler, batch_size, workers, device, drop_last, collate_fn=None):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      collate_fn=collate_fn,
                      pin_memory=device.type == "cuda", persistent_workers=False,
                      generator=torch.Generator(),  # keep the loader off the global RNG (exact resume)
                      multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None)


def fit(model: str | nn.Module | None = None, recipe: str | Recipe = "demo", *, data: str | None = None,
        out_dir: str | None = None, overrides=None, resume: bool | str = False, echo=print,
        progress: bool = True, tensorboard: bool = True) -> FitResult:
    """Train ``model`` (a registered name, a module, or the recipe's ``model``) with a recipe.

    ``recipe``: a shipped name, a YAML path or a Recipe; ``overrides``: ``{"key": value}`` or
    ``["key=value", ...]``; ``data``: ``digits``, ``synthetic`` or a folder with ``train/`` and ``val/``
    (default: the recipe's); ``resume``: True (``out_dir/last.safetensors``) or a checkpoint path."""
    recipe = load_recipe(recipe, overrides)
    if data is not None:
        recipe.data = data
    if not recipe.data:
        raise ConfigError(f"recipe {recipe.name} names no data set: pass --data DIR|digits|synthetic")
    info = init_distributed(recipe.device)
    device = info.device
    main = info.is_main
    say = echo if main else (lambda *a, **k: None)
    stop = _StopRequest()
    try:
        with stop.installed():
            return _fit(model, recipe, info, device, main, say, out_dir, resume, progress, tensorboard, stop)
    finally:
        barrier(info)


class _StopRequest:
    """SIGTERM -> a flag the loop checks after each step (the handler itself does nothing else,
    so a signal during a checkpoint write cannot tear it)."""

    def __init__(self):
        self.signum = None

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals can only be handled in the main thread
            return
        old = signal.signal(signal.SIGTERM, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, old)

    def _handler(self, signum, frame):
        self.signum = signum

    def requested(self, info: DistInfo) -> bool:
        flag = self.signum is not None
        if info.enabled:  # every rank stops at the same step
            flag = all_reduce_sum([float(flag)], info)[0] > 0
        return flag


def _nan_injection() -> dict[int, float]:
    """Testing hook: ``EFFNETS_TEST_INJECT_NAN="3,7=inf"`` -> {3: nan, 7: inf} (1-based steps)."""
    spec = os.environ.get("EFFNETS_TEST_INJECT_NAN", "").strip()
    out = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        step, _, value = part.partition("=")
        out[int(step)] = float(value or "nan")
    return out


def _write_bad_files(path: str, bad: list, empty_classes: list) -> None:
    lines = [f"# effnets: {len(bad)} bad image files skipped (split, path, reason)"]
    lines += [f"{split}\t{p}\t{reason}" for split, p, reason in bad]
    if empty_classes:
        lines.append(f"# classes without usable training images (kept as classes): {', '.join(empty_classes)}")
    ckpt.atomic_write_text(path, "\n".join(lines) + "\n")


def _fit(model, recipe, info, device, main, say, out_dir, resume, show_progress, tensorboard, stop) -> FitResult:
    _seed_everything(recipe.seed)
    splits = build_splits(recipe.data, synthetic_samples=recipe.synthetic_samples,
                          image_size=recipe.train_size or 32, verify="full" if recipe.verify_images else "header",
                          max_pixels=recipe.max_image_pixels, max_bad_fraction=recipe.max_bad_fraction)
    num_classes = splits.num_classes
    net, name, card = _build_model(model, recipe, num_classes)
    if card is None:
        from ..registry import ModelCard
        card = ModelCard(name=name, family="custom", paper="", arxiv="", train_size=224, test_size=224)
    out_dir = out_dir or os.path.join("runs", f"{recipe.name}_{name}")
    os.makedirs(out_dir, exist_ok=True)
    bad_log = os.path.join(out_dir, "bad_files.log")  # appended to by loader workers
    if main:
        for tmp in glob.glob(os.path.join(glob.escape(out_dir), "*.safetensors.*.tmp")):
            os.unlink(tmp)  # a write cut short by a crash (the checkpoint it was replacing is intact)
        if not resume and os.path.exists(bad_log):
            os.unlink(bad_log)
    split_sets = [(k, ds) for k, ds in (("train", splits.train), ("val", splits.val)) if hasattr(ds, "bad_files")]
    for _, ds in split_sets:
        ds.bad_log = bad_log

    def bad_files() -> list:
        return [(k, p, r) for k, ds in split_sets for p, r in ds.bad_files()]

    def check_bad(final: bool = False) -> list:
        for k, ds in split_sets:
            check_bad_fraction(ds, recipe.max_bad_fraction, f"{'training' if k == 'train' else 'validation'} set "
                                                             f"{ds.root}")
        bad = bad_files()
        if main and (bad or final) and split_sets:
            _write_bad_files(paths["bad"], bad, getattr(splits.train, "empty_classes", []))
        return bad

    # -- resolved settings ------------------------------------------------------------------
    dropout = card.dropout if recipe.dropout is None else recipe.dropout
    drop_path = card.drop_path if recipe.drop_path is None else recipe.drop_path
    if hasattr(net, "set_regularization"):
        net.set_regularization(dropout=dropout, drop_path=drop_path)
    train_size = recipe.train_size or card.train_size
    eval_size = recipe.eval_size or card.test_size
    crop_pct = card.crop_pct if recipe.crop_pct is None else recipe.crop_pct
    interpolation = recipe.interpolation or card.interpolation
    prog = from_recipe(recipe, train_size, dropout)

    # -- data ---------------------------------------------------------------------------------
    tt = TrainTransform(train_size, interpolation=interpolation, mean=card.mean, std=card.std,
                        scale=recipe.crop_scale, hflip=recipe.hflip, augment=recipe.augment,
                        magnitude=recipe.randaug_magnitude, num_layers=recipe.randaug_layers)
    train_base = splits.train
    pseudo_count = 0
    if recipe.teacher or recipe.unlabeled:
        train_base, pseudo_count = _with_pseudo_labels(recipe, splits, num_classes, eval_size, crop_pct, device, say)
    train_ds = Transformed(train_base, tt, seed=recipe.seed, seeded=True)
    val_ds = Transformed(splits.val, eval_transform(eval_size, crop_pct, interpolation, card.mean, card.std))
    sampler = ResumableSampler(len(train_ds), shuffle=True, seed=recipe.seed, rank=info.rank,
                               world_size=info.world_size)
    val_sampler = ResumableSampler(len(val_ds), shuffle=False, rank=info.rank, world_size=info.world_size, pad=False)
    micro_per_epoch = sampler.num_samples() // recipe.batch_size
    steps_per_epoch = micro_per_epoch // recipe.accum_steps
    if steps_per_epoch < 1:
        raise ConfigError(f"batch_size {recipe.batch_size} x accum_steps {recipe.accum_steps} x {info.world_size} "
                          f"process(es) is larger than the training set ({len(train_ds)} images)")
    global_batch = recipe.batch_size * recipe.accum_steps * info.world_size
    lr = recipe.scaled_lr(global_batch)
    total_steps = int(math.ceil(recipe.epochs * steps_per_epoch))
    num_epochs = int(math.ceil(recipe.epochs))

    # -- model, optimiser, schedule, EMA ----------------------------------------------------------
    net = net.to(device)
    if recipe.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if recipe.sync_bn and info.enabled:
        if device.type != "cuda":
            raise ConfigError("sync_bn needs CUDA (PyTorch's SyncBatchNorm is GPU-only); on CPU, BN statistics "
                              "are averaged across ranks before each evaluation instead")
        net = convert_sync_bn(net)
    optimizer = build_optimizer(net, recipe, lr)
    schedule = build_schedule(recipe, lr, steps_per_epoch)
    ema = ModelEma(net, recipe.ema_decay, recipe.ema_warmup) if recipe.ema_decay > 0 else None
    scaler = torch.amp.GradScaler("cuda") if recipe.precision == "fp16" and device.type == "cuda" else None
    train_model = net
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    mixer = MixUpCutMix(recipe.mixup_alpha, recipe.cutmix_alpha, recipe.mix_prob)
    best_metric = recipe.best_metric if recipe.best_metric != "auto" else ("ema_top1" if ema else "top1")
    if best_metric == "ema_top1" and ema is None:
        raise ConfigError("best_metric ema_top1 needs EMA (set ema_decay > 0)")

    paths = {k: os.path.join(out_dir, v) for k, v in dict(last="last.safetensors", best="best.safetensors",
                                                            config="config.yaml", plot="plot.png",
                                                            bad="bad_files.txt").items()}
    resolved = dict(model=name, num_classes=num_classes, classes=list(splits.classes), data=recipe.data,
                    train_images=len(train_ds), pseudo_labelled_images=pseudo_count, val_images=len(val_ds),
                    world_size=info.world_size, device=str(device), global_batch=global_batch, lr=lr,
                    steps_per_epoch=steps_per_epoch, total_steps=total_steps, train_size=train_size,
                    eval_size=eval_size, crop_pct=crop_pct, interpolation=interpolation, mean=list(card.mean),
                    std=list(card.std), dropout=dropout, drop_path=drop_path, best_metric=best_metric,
                    progressive=[s.describe() for s in prog.stages()] if prog else None,
                    torch=str(torch.__version__))

    # -- resume ---------------------------------------------------------------------------------
    start_epoch, batches_done, global_step, history = 0, 0, 0, []
    best = {"value": -1.0, "epoch": 0}
    skipped_steps = 0
    last_good = {"path": None, "step": None}  # the newest complete checkpoint, named when a run must stop
    if resume is True and not os.path.exists(paths["last"]):
        say(f"--resume: no checkpoint at {paths['last']} yet (killed before the first one?): starting a new run")
        resume = False
    if resume:
        path = resume if isinstance(resume, str) else paths["last"]
        meta = ckpt.restore(path, net, ema=ema, optimizer=optimizer, schedule=schedule)
        try:
            start_epoch, batches_done = int(meta["epoch"]), int(meta["batches_done"])
            global_step, history, best = int(meta["global_step"]), list(meta["history"]), dict(meta["best"])
            skipped_steps = int(meta.get("skipped_steps", 0))
        except (KeyError, TypeError, ValueError) as e:
            from ..errors import CheckpointError
            raise CheckpointError(f"{path} has incomplete run metadata ({type(e).__name__}: {e}); "
                                  "it cannot be resumed") from None
        last_good = {"path": path, "step": global_step}
        if scaler is not None and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        if meta.get("steps_per_epoch") != steps_per_epoch:
            raise ConfigError(f"cannot resume {path}: it ran {meta.get('steps_per_epoch')} steps per epoch, this "
                              f"run {steps_per_epoch} (batch size, data or process count changed)")
        say(f"resumed from {path} at epoch {start_epoch + 1}, step {global_step}")

    def save(path, *, full=True, extra_meta=None):
        meta = dict(epoch=epoch_state["epoch"], batches_done=epoch_state["batches"], global_step=global_step,
                    steps_per_epoch=steps_per_epoch, history=history, best=best, model=name,
                    model_args=recipe.model_args, num_classes=num_classes, classes=list(splits.classes),
                    recipe=recipe.to_dict(), resolved=resolved, skipped_steps=skipped_steps,
                    scaler=scaler.state_dict() if scaler is not None else None, **(extra_meta or {}))
        if main:
            try:
                ckpt.save_checkpoint(path, net, ema=ema, optimizer=optimizer if full else None,
                                     schedule=schedule if full else None, meta=meta, rng=full)
            except OSError as e:
                why = os.strerror(e.errno) if e.errno else str(e)
                kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                        else f"no {os.path.basename(path)} had been written before")
                good = f"; last good checkpoint: {last_good['path']} (step {last_good['step']})" \
                    if last_good["path"] else ""
                hint = "free some space, then " if e.errno in (errno.ENOSPC, errno.EDQUOT) else ""
                raise TrainingError(f"could not write checkpoint {path} at step {global_step}: {why} "
                                    f"[{errno.errorcode.get(e.errno, e.errno)}]; {kept}{good}; {hint}resume with "
                                    "--resume") from None
        if full:
            last_good.update(path=path, step=global_step)

    def step_done(step: int) -> bool:
        """After each optimizer step (or skipped one): periodic checkpoint; True to stop the run
        (max_steps reached, or SIGTERM)."""
        if recipe.checkpoint_every and step % recipe.checkpoint_every == 0:
            save(paths["last"])
        return bool(recipe.max_steps and step >= recipe.max_steps) or stop.requested(info)

    if main:
        os.makedirs(out_dir, exist_ok=True)
        ckpt.atomic_write_text(paths["config"], "# effnets run config: the recipe as run, then resolved values\n"
                               + dump_recipe(recipe) + "---\n" + yaml.safe_dump(resolved, sort_keys=False))
    runlog = RunLog(out_dir, enabled=main, tensorboard=tensorboard, echo=say)
    val_loader = _loader(val_ds, val_sampler, recipe.batch_size, recipe.workers, device, drop_last=False,
                         collate_fn=collate_skip_none)
    bad = check_bad()
    if bad:
        say(f"data: {len(bad)} bad image files skipped (listed in {paths['bad']}), e.g. {bad[0][1]}: {bad[0][2]}")
    empty = getattr(splits.train, "empty_classes", [])
    if empty:
        say(f"data: {len(empty)} classes have no usable training image (kept as classes, they are the folder "
            f"names): {', '.join(empty)}")
    inject_nan = _nan_injection()
    n_params = sum(p.numel() for p in net.parameters())
    say(f"effnets train: {name} ({n_params / 1e6:.3f}M params) on {recipe.data} ({len(train_ds)} train / "
        f"{len(val_ds)} val, {num_classes} classes), recipe {recipe.name}, {info.world_size} process(es) on {device}")
    say(f"  {recipe.optimizer} lr {lr:.4g} (global batch {global_batch}), {recipe.schedule} schedule, "
        f"{recipe.epochs:g} epochs x {steps_per_epoch} steps, train {train_size}px / eval {eval_size}px, "
        f"dropout {dropout:g}, drop_path {drop_path:g}, EMA {recipe.ema_decay:g}; output {out_dir}")

    epoch_state = {"epoch": start_epoch, "batches": batches_done}
    train_time, train_images = 0.0, 0
    completed = True
    preempted = False
    stage_shown = None
    last_eval: dict = {}
    for epoch in range(start_epoch, num_epochs):
        if global_step >= total_steps:
            break
        if prog is not None:
            st = prog.for_epoch(epoch)
            tt.size = st.image_size
            tt.set_magnitude(st.randaug_magnitude)
            mixer.mixup_alpha = st.mixup_alpha
            if hasattr(net, "set_regularization"):
                net.set_regularization(dropout=st.dropout)
            if st.stage != stage_shown:
                say(f"progressive {st.describe()}")
                stage_shown = st.stage
        train_ds.epoch = epoch
        skip = epoch_state["batches"] if epoch == start_epoch else 0
        sampler.set_epoch(epoch, start=skip * recipe.batch_size)
        epoch_state.update(epoch=epoch, batches=skip)
        loader = _loader(train_ds, sampler, recipe.batch_size, recipe.workers, device, drop_last=True)
        steps_this_epoch = min(steps_per_epoch, total_steps - (global_step - skip // recipe.accum_steps))
        bar = Progress(steps_this_epoch, f"epoch {epoch + 1}/{num_epochs}", enabled=main and show_progress,
                       every=recipe.log_every)
        bar.n = skip // recipe.accum_steps
        train_model.train()
        loss_sum = correct = seen = 0.0
        t0 = time.perf_counter()
        micro = skip
        optimizer.zero_grad(set_to_none=True)
        stopped = False
        bad_step = False
        for x, y in loader:
            if micro >= steps_this_epoch * recipe.accum_steps:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if recipe.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            target = soft_targets(y, num_classes, recipe.label_smoothing)
            hard = y if y.ndim == 1 else y.argmax(dim=-1)
            g = torch.Generator().manual_seed(recipe.seed * 1_000_003 + global_step * 97 + micro % recipe.accum_steps)
            x, target = mixer(x, target, g)
            last_micro = (micro + 1) % recipe.accum_steps == 0
            sync = contextlib.nullcontext() if last_micro or not info.enabled else train_model.no_sync()
            with sync:
                with _autocast(recipe.precision, device):
                    logits = train_model(x)
                loss = soft_target_cross_entropy(logits, target)
                if global_step + 1 in inject_nan:  # testing hook (EFFNETS_TEST_INJECT_NAN)
                    loss = loss * inject_nan[global_step + 1]
                finite = bool(torch.isfinite(loss))
                if finite:
                    scaled = loss / recipe.accum_steps
                    (scaler.scale(scaled) if scaler else scaled).backward()
                else:
                    bad_step = True
                    if recipe.nan_policy == "stop" and not info.enabled:
                        raise _nonfinite(loss, global_step, epoch, micro, recipe, last_good, skipped_steps)
                    if info.enabled:  # DDP: every rank must run a backward; zero gradients, discarded below
                        sum((p * 0).sum() for p in net.parameters() if p.requires_grad).backward()
            micro += 1
            bs = y.shape[0]
            loss_sum += (loss.item() if finite else 0.0) * bs
            correct += (logits.argmax(-1) == hard).sum().item()
            seen += bs
            if not last_micro:
                continue
            cur_lr = schedule.step_to(optimizer, global_step)
            if info.enabled:
                bad_step = all_reduce_sum([float(bad_step)], info)[0] > 0
            if bad_step:
                if recipe.nan_policy == "stop":
                    raise _nonfinite(loss, global_step, epoch, micro - 1, recipe, last_good, skipped_steps)
                optimizer.zero_grad(set_to_none=True)
                skipped_steps += 1
                global_step += 1
                epoch_state["batches"] = micro
                bad_step = False
                say(f"step {global_step}: non-finite loss, update skipped ({skipped_steps} of at most "
                    f"{recipe.max_skipped_steps}, nan_policy=skip)")
                if skipped_steps > recipe.max_skipped_steps:
                    raise _nonfinite(loss, global_step - 1, epoch, micro - 1, recipe, last_good, skipped_steps)
                if step_done(global_step):
                    stopped = True
                    break
                continue
            if recipe.grad_clip > 0:
                if scaler:
                    scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(net.parameters(), recipe.grad_clip)
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(net)
            global_step += 1
            epoch_state["batches"] = micro
            bar.update(micro // recipe.accum_steps, int(seen) * info.world_size,
                       loss=loss_sum / seen, acc=100.0 * correct / seen, lr=cur_lr)
            if step_done(global_step):
                stopped = True
                break
        bar.close()
        dt = time.perf_counter() - t0
        train_time += dt
        train_images += int(seen) * info.world_size
        if stopped and micro < steps_this_epoch * recipe.accum_steps:
            save(paths["last"])
            completed = False
            if stop.signum is not None:
                preempted = True
                say(f"received SIGTERM: stopped at step {global_step}, checkpoint {paths['last']} written; "
                    "continue with --resume")
            else:
                say(f"stopped at step {global_step} (max_steps {recipe.max_steps}); checkpoint {paths['last']}")
            break
        # -- end of epoch: BN stats, evaluation, logs, checkpoints ---------------------------------
        epoch_state.update(epoch=epoch + 1, batches=0)
        average_bn_stats(net, info)
        row = dict(epoch=epoch + 1, step=global_step, lr=schedule.lr_at(max(global_step - 1, 0)),
                   train_loss=loss_sum / max(seen, 1), train_top1=100.0 * correct / max(seen, 1),
                   images_per_s=seen * info.world_size / max(dt, 1e-9), time_s=round(dt, 3))
        if prog is not None:
            st = prog.for_epoch(epoch)
            row.update(image_size=st.image_size, randaug_magnitude=st.randaug_magnitude,
                       mixup_alpha=st.mixup_alpha, dropout=st.dropout)
        is_last = epoch + 1 == num_epochs or global_step >= total_steps
        if (epoch + 1) % recipe.eval_every == 0 or is_last:
            r = evaluate(net, val_loader, device, num_classes, info, recipe.precision, recipe.channels_last)
            row.update(val_loss=r["loss"], val_top1=r["top1"], val_top5=r["top5"])
            last_eval = {"top1": r["top1"]}
            if ema is not None:
                re = evaluate(ema.module, val_loader, device, num_classes, info, recipe.precision, recipe.channels_last)
                row.update(val_ema_loss=re["loss"], val_ema_top1=re["top1"], val_ema_top5=re["top5"])
                last_eval["ema_top1"] = re["top1"]
            value = row["val_ema_top1" if best_metric == "ema_top1" else "val_top1"]
            msg = (f"epoch {epoch + 1}: train loss {row['train_loss']:.4f} top-1 {row['train_top1']:.2f}% | "
                   f"val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%")
            if ema is not None:
                msg += f" | EMA top-1 {row['val_ema_top1']:.2f}%"
            say(msg + f" | {row['images_per_s']:.0f} img/s")
            history.append(row)
            if value > best["value"]:
                best = {"value": value, "epoch": epoch + 1}
                save(paths["best"], full=False)
        else:
            history.append(row)
        save(paths["last"])
        runlog.write(history)
        check_bad()  # files that failed when decoded this epoch; too many stop the run here
        if global_step < total_steps and stop.requested(info):
            preempted = True
            completed = False
            say(f"received SIGTERM: stopped at step {global_step} (end of epoch {epoch + 1}), checkpoint "
                f"{paths['last']} written; continue with --resume")
            break
        if recipe.max_steps and global_step >= recipe.max_steps and global_step < total_steps:
            completed = False
            say(f"stopped at step {global_step} (max_steps {recipe.max_steps}); checkpoint {paths['last']}")
            break
    runlog.close()
    if info.enabled:
        _check_ranks_agree(net, info, say)
    plot = plot_history(history, paths["plot"]) if main and completed else None
    result = FitResult(out_dir=out_dir, best_metric=best_metric, best_top1=best["value"], best_epoch=best["epoch"],
                       final_top1=last_eval.get("top1"), final_ema_top1=last_eval.get("ema_top1"),
                       train_time_s=train_time, images_per_s=train_images / max(train_time, 1e-9),
                       global_step=global_step, completed=completed, checkpoint=paths["last"],
                       best_checkpoint=paths["best"], log_csv=runlog.csv_path, plot=plot, config=paths["config"],
                       history=history, model=net, bad_files=check_bad(final=True), preempted=preempted,
                       skipped_steps=skipped_steps)
    if result.bad_files:
        say(f"data: {len(result.bad_files)} bad image files were skipped:")
        for split, p, reason in result.bad_files[:20]:
            say(f"  {split}  {p}: {reason}")
        if len(result.bad_files) > 20:
            say(f"  ... and {len(result.bad_files) - 20} more in {paths['bad']}")
    say(result.summary())
    return result


def _nonfinite(loss, step, epoch, micro, recipe, last_good, skipped) -> TrainingError:
    value = float(loss.detach().float().item())
    where = f"step {step + 1} (epoch {epoch + 1}, batch {micro + 1})"
    kept = (f"last good checkpoint: {last_good['path']} (step {last_good['step']}), kept unchanged"
            if last_good["path"] else "no checkpoint had been written yet")
    if recipe.nan_policy == "skip":
        return TrainingError(f"non-finite loss ({value}) at {where}: {skipped} updates skipped, over "
                             f"max_skipped_steps={recipe.max_skipped_steps}; the run stopped; {kept}. Lower the "
                             "learning rate or set grad_clip, then --resume")
    return TrainingError(f"non-finite loss ({value}) at {where}; the run stopped (nan_policy=stop); {kept}. Lower "
                         "the learning rate or set grad_clip, then --resume; or set nan_policy=skip to skip such "
                         "steps")


@torch.no_grad()
def _check_ranks_agree(net: nn.Module, info: DistInfo, say) -> None:
    """DDP keeps replicas identical; verify it (weights and averaged BN buffers) at the end."""
    import torch.distributed as dist
    sd = net.state_dict()
    local = torch.tensor([sum(float(v.double().sum()) for v in sd.values() if v.dtype.is_floating_point),
                          sum(float(v.double().abs().sum()) for v in sd.values() if v.dtype.is_floating_point)],
                         dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    gathered = [torch.zeros_like(local) for _ in range(info.world_size)]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP ranks disagree on the weights: {[g.tolist() for g in gathered]}")
    say(f"DDP: all {info.world_size} ranks hold identical weights (checksum {gathered[0][0].item():.10g})")


def _with_pseudo_labels(recipe, splits, num_classes, eval_size, crop_pct, device, say):
    from .. import create_model
    from .teacher import PseudoLabeled, SoftLabeled, pseudo_label
    if not (recipe.teacher and recipe.unlabeled):
        raise ConfigError("teacher training needs both a teacher (--teacher NAME) and an unlabelled folder "
                          "(--unlabeled DIR)")
    teacher = create_model(recipe.teacher, num_classes=num_classes, **recipe.teacher_args)
    if recipe.teacher_checkpoint:
        tensors, _ = ckpt.read_checkpoint(recipe.teacher_checkpoint)
        use_ema = any(k.startswith("ema.") for k in tensors)
        try:
            teacher.load_state_dict(ckpt.model_state(tensors, use_ema, recipe.teacher_checkpoint))
        except RuntimeError as e:
            raise ConfigError(f"teacher checkpoint {recipe.teacher_checkpoint} does not fit {recipe.teacher}: "
                              f"{str(e).splitlines()[0]}") from None
    tc = teacher.card
    tf = eval_transform(recipe.eval_size or tc.test_size, tc.crop_pct if recipe.crop_pct is None else crop_pct,
                        tc.interpolation, tc.mean, tc.std)
    pl: PseudoLabeled = pseudo_label(teacher, recipe.unlabeled, tf, num_classes=num_classes, mode=recipe.pseudo_labels,
                                     threshold=recipe.pseudo_threshold, batch_size=recipe.batch_size, device=device)
    say(f"teacher {recipe.teacher}: {len(pl)} {recipe.pseudo_labels} pseudo-labelled images from {recipe.unlabeled}")
    return ConcatDataset([SoftLabeled(splits.train, num_classes), pl]), len(pl)
