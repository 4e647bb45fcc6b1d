"""``fit``: recipe -> data -> model -> optimiser/schedule/EMA/progressive stages -> checkpoints,
logs, plot, summary.  The same code runs on CPU and CUDA, in one process or under torchrun."""
from __future__ import annotations

import contextlib
import math
import os
import random
import time
from dataclasses import dataclass, field

import numpy as np
import yaml
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from ..data.datasets import Transformed, build_splits
from ..data.mix import MixUpCutMix, soft_target_cross_entropy, soft_targets
from ..data.transforms import TrainTransform, eval_transform
from ..errors import ConfigError
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
    for x, y in loader:
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
    m = create_model(name, num_classes=num_classes, **recipe.model_args)
    return m, name, m.card


def _loader(ds, sampler, batch_size, workers, device, drop_last):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
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
    try:
        return _fit(model, recipe, info, device, main, say, out_dir, resume, progress, tensorboard)
    finally:
        barrier(info)


def _fit(model, recipe, info, device, main, say, out_dir, resume, show_progress, tensorboard) -> FitResult:
    _seed_everything(recipe.seed)
    splits = build_splits(recipe.data, synthetic_samples=recipe.synthetic_samples,
                          image_size=recipe.train_size or 32)
    num_classes = splits.num_classes
    net, name, card = _build_model(model, recipe, num_classes)
    if card is None:
        from ..registry import ModelCard
        card = ModelCard(name=name, family="custom", paper="", arxiv="", train_size=224, test_size=224)
    out_dir = out_dir or os.path.join("runs", f"{recipe.name}_{name}")

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
                                                            config="config.yaml", plot="plot.png").items()}
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
    if resume:
        path = resume if isinstance(resume, str) else paths["last"]
        meta = ckpt.restore(path, net, ema=ema, optimizer=optimizer, schedule=schedule)
        start_epoch, batches_done = meta["epoch"], meta["batches_done"]
        global_step, history, best = meta["global_step"], meta["history"], meta["best"]
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
                    recipe=recipe.to_dict(), resolved=resolved,
                    scaler=scaler.state_dict() if scaler is not None else None, **(extra_meta or {}))
        if main:
            ckpt.save_checkpoint(path, net, ema=ema, optimizer=optimizer if full else None,
                                 schedule=schedule if full else None, meta=meta, rng=full)

    if main:
        os.makedirs(out_dir, exist_ok=True)
        ckpt.atomic_write_text(paths["config"], "# effnets run config: the recipe as run, then resolved values\n"
                               + dump_recipe(recipe) + "---\n" + yaml.safe_dump(resolved, sort_keys=False))
    runlog = RunLog(out_dir, enabled=main, tensorboard=tensorboard, echo=say)
    val_loader = _loader(val_ds, val_sampler, recipe.batch_size, recipe.workers, device, drop_last=False)
    n_params = sum(p.numel() for p in net.parameters())
    say(f"effnets train: {name} ({n_params / 1e6:.3f}M params) on {recipe.data} ({len(train_ds)} train / "
        f"{len(val_ds)} val, {num_classes} classes), recipe {recipe.name}, {info.world_size} process(es) on {device}")
    say(f"  {recipe.optimizer} lr {lr:.4g} (global batch {global_batch}), {recipe.schedule} schedule, "
        f"{recipe.epochs:g} epochs x {steps_per_epoch} steps, train {train_size}px / eval {eval_size}px, "
        f"dropout {dropout:g}, drop_path {drop_path:g}, EMA {recipe.ema_decay:g}; output {out_dir}")

    epoch_state = {"epoch": start_epoch, "batches": batches_done}
    train_time, train_images = 0.0, 0
    completed = True
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
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"loss is {loss.item()} at step {global_step}; lower the learning rate")
                scaled = loss / recipe.accum_steps
                (scaler.scale(scaled) if scaler else scaled).backward()
            micro += 1
            bs = y.shape[0]
            loss_sum += loss.item() * bs
            correct += (logits.argmax(-1) == hard).sum().item()
            seen += bs
            if not last_micro:
                continue
            cur_lr = schedule.step_to(optimizer, global_step)
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
            if recipe.checkpoint_every and global_step % recipe.checkpoint_every == 0:
                save(paths["last"])
            if recipe.max_steps and global_step >= recipe.max_steps:
                stopped = True
                break
        bar.close()
        dt = time.perf_counter() - t0
        train_time += dt
        train_images += int(seen) * info.world_size
        if stopped and micro < steps_this_epoch * recipe.accum_steps:
            save(paths["last"])
            completed = False
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
                       history=history, model=net)
    say(result.summary())
    return result


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
