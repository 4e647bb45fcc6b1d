"""What a person sees: a progress bar (loss, accuracy, images/s, ETA), a CSV log, TensorBoard
scalars when tensorboard is installed, and a PNG plot of loss, accuracy and learning rate."""
from __future__ import annotations

import csv
import os
import sys
import time


def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """One line per epoch, redrawn in place on a terminal; on a pipe, a line every ``every`` steps."""

    def __init__(self, total: int, desc: str, enabled: bool = True, every: int = 10, stream=None):
        self.total, self.desc, self.enabled, self.every = total, desc, enabled, every
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.n = 0
        self.line = ""

    def update(self, n_done: int, images: int, **metrics) -> None:
        self.n = n_done
        if not self.enabled:
            return
        el = time.perf_counter() - self.t0
        rate = images / el if el > 0 else 0.0
        eta = el / n_done * (self.total - n_done) if n_done else 0.0
        width = 20
        fill = int(width * n_done / max(1, self.total))
        ms = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.line = (f"{self.desc} [{'#' * fill}{'.' * (width - fill)}] {n_done}/{self.total} {ms} "
                     f"{rate:.0f} img/s ETA {_fmt_time(eta)}")
        if self.tty:
            self.stream.write("\r" + self.line + " " * 4)
            self.stream.flush()
        elif n_done % self.every == 0 or n_done == self.total:
            self.stream.write(self.line + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.line:
            self.stream.write("\n")
            self.stream.flush()


class RunLog:
    """Epoch rows to ``log.csv`` (rewritten from the history so a resumed run stays consistent),
    scalars to TensorBoard under ``tb/`` if ``torch.utils.tensorboard`` imports."""

    def __init__(self, out_dir: str, enabled: bool = True, tensorboard: bool = True, echo=print):
        self.out_dir, self.enabled = out_dir, enabled
        self.csv_path = os.path.join(out_dir, "log.csv")
        self.tb = None
        self.note = ""
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except Exception as e:  # noqa: BLE001 - tensorboard missing or broken: skip it, say so
                self.note = f"TensorBoard scalars skipped ({type(e).__name__}: install tensorboard to get them)"
                echo(self.note)

    def write(self, history: list[dict]) -> None:
        if not self.enabled or not history:
            return
        keys = list(dict.fromkeys(k for row in history for k in row))
        with open(self.csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(history)
        if self.tb is not None:
            row = history[-1]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, int(row["epoch"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_history(history: list[dict], path: str) -> str | None:
    """Loss, accuracy and learning rate per epoch in one PNG; returns the path or None."""
    if not history:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ep, [r["train_loss"] for r in history], label="train")
    if any("val_loss" in r for r in history):
        ax[0].plot([r["epoch"] for r in history if "val_loss" in r], [r["val_loss"] for r in history if "val_loss" in r],
                   label="val")
    ax[0].set_title("loss")
    ax[1].plot(ep, [r["train_top1"] for r in history], label="train")
    for key, lab in (("val_top1", "val"), ("val_ema_top1", "val (EMA)")):
        pts = [(r["epoch"], r[key]) for r in history if key in r]
        if pts:
            ax[1].plot(*zip(*pts), label=lab)
    ax[1].set_title("top-1 accuracy (%)")
    ax[2].plot(ep, [r["lr"] for r in history])
    ax[2].set_title("learning rate (end of epoch)")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax[0].legend()
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
