"""The EfficientNet paper's step 1 (section 3.3): fix phi = 1 and grid-search alpha, beta, gamma
under alpha * beta^2 * gamma^2 ~= 2, training each candidate with a short proxy schedule;
and its Fig. 8 in small: compound against width-, depth- and resolution-only scaling at equal
FLOPs budgets.

Candidates are trained by ``effnets.train.fit`` from a *proxy base*: the base network at the
multipliers and input size of the proxy recipe (the ``demo`` recipe: EfficientNet-B0 at width
0.25, depth 0.34, 32 px digits), so a whole search fits in minutes on a CPU.
"""
from __future__ import annotations

import csv
import itertools
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace

from ..errors import ConfigError
from .rules import spec_macs

# 11 triples within 6% of 2: the single-dimension extremes (2,1,1), (1,1.41,1), (1,1,1.41), the
# paper's (1.2, 1.1, 1.15) and mixes around it.
REDUCED_GRID = dict(alphas=(1.0, 1.2, 1.4, 2.0), betas=(1.0, 1.1, 1.2, 1.41), gammas=(1.0, 1.1, 1.15, 1.2, 1.41))
REDUCED_TOL = 0.06
FULL_STEP = 0.05  # full grid: every multiple of 0.05 in [1, 2]


@dataclass(frozen=True)
class Candidate:
    label: str
    alpha: float  # depth multiplier
    beta: float  # width multiplier
    gamma: float  # resolution multiplier

    @property
    def product(self) -> float:
        return self.alpha * self.beta ** 2 * self.gamma ** 2


@dataclass
class Trial:
    label: str
    alpha: float
    beta: float
    gamma: float
    product: float
    resolution: int
    params: int
    macs: int
    top1: float
    train_time_s: float


def grid(alphas, betas, gammas, target: float = 2.0, tol: float = 0.1) -> list[Candidate]:
    """Triples (each >= 1) whose alpha * beta^2 * gamma^2 is within ``tol`` (relative) of target."""
    if tol <= 0:
        raise ConfigError(f"tolerance must be > 0, got {tol}")
    out = []
    for a, b, g in itertools.product(alphas, betas, gammas):
        if min(a, b, g) < 1:
            raise ConfigError(f"grid values must be >= 1 (got alpha={a}, beta={b}, gamma={g})")
        if abs(a * b * b * g * g / target - 1) <= tol:
            out.append(Candidate(f"a{a:g}_b{b:g}_g{g:g}", a, b, g))
    if not out:
        raise ConfigError(f"no grid triple has alpha*beta^2*gamma^2 within {tol:g} of {target:g}; widen the grid or --tol")
    return out


def full_grid_values() -> tuple[float, ...]:
    return tuple(round(1 + i * FULL_STEP, 2) for i in range(int(1 / FULL_STEP) + 1))


def _proxy(base: str, recipe_name: str):
    """(base spec at proxy multipliers, proxy input size, recipe) from the proxy recipe."""
    from ..registry import get_entry
    from ..train.recipe import load_recipe
    recipe = load_recipe(recipe_name)
    entry = get_entry(base)
    if entry.spec is None:
        raise ConfigError(f"{base!r} has no stage table to scale")
    args = dict(recipe.model_args) if recipe.model == base or not recipe.model else {}
    spec = entry.spec.replace(width=entry.spec.width * args.get("width", 1.0),
                              depth=entry.spec.depth * args.get("depth", 1.0))
    size = recipe.train_size or 32
    return spec, size, recipe


def _short_schedule(recipe, epochs: float) -> dict:
    """Proxy schedule: ``epochs`` epochs with the warm-up shrunk to at most a quarter of them."""
    return dict(epochs=epochs, warmup_epochs=min(recipe.warmup_epochs, epochs / 4))


def _train_one(job: dict) -> dict:
    import torch

    from ..nets.convnet import ConvNet
    from ..scaling.core import scale
    from ..train.loop import fit
    torch.set_num_threads(job["threads"])
    spec = scale(job["spec"])
    res = job["resolution"]
    model = ConvNet(spec, num_classes=10)
    overrides = dict(job["overrides"], train_size=res, eval_size=res)
    t = time.perf_counter()
    result = fit(model, job["recipe"], data=job["data"], out_dir=job["out_dir"], overrides=overrides,
                 echo=lambda *a, **k: None, progress=False, tensorboard=False)
    top1 = result.best_top1
    return dict(top1=top1, time=time.perf_counter() - t, params=sum(p.numel() for p in model.parameters()),
                macs=spec_macs(spec, res))


def _workers(requested: int | None) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    workers = requested or max(1, cores // 2)
    return workers, max(1, cores // workers)


def run_trials(jobs: list[dict], workers: int | None, echo=print) -> list[dict]:
    n, threads = _workers(workers)
    for j in jobs:
        j["threads"] = threads
    if n == 1:
        out = []
        for j in jobs:
            r = _train_one(j)
            echo(f"  {j['label']:<28} top-1 {r['top1']:6.2f}%  {r['macs'] / 1e6:8.2f} MMACs  {r['time']:5.1f} s")
            out.append(r)
        return out
    import multiprocessing as mp
    with ProcessPoolExecutor(n, mp_context=mp.get_context("fork")) as pool:
        out = list(pool.map(_train_one, jobs))
    for j, r in zip(jobs, out):
        echo(f"  {j['label']:<28} top-1 {r['top1']:6.2f}%  {r['macs'] / 1e6:8.2f} MMACs  {r['time']:5.1f} s")
    return out


def search(base: str = "efficientnet_b0", data: str = "digits", epochs: float = 4, recipe: str = "demo",
           alphas=None, betas=None, gammas=None, tol: float = REDUCED_TOL, out_dir: str = "runs/scale_search",
           workers: int | None = None, echo=print) -> tuple[list[Trial], Trial]:
    """Train every grid candidate at phi = 1 for ``epochs`` and return (trials, best)."""
    if epochs <= 0:
        raise ConfigError(f"--budget-epochs must be > 0, got {epochs}")
    spec, size, rec = _proxy(base, recipe)
    short = _short_schedule(rec, epochs)
    cands = grid(alphas or REDUCED_GRID["alphas"], betas or REDUCED_GRID["betas"], gammas or REDUCED_GRID["gammas"],
                 tol=tol)
    echo(f"grid search for {base} on {data}: {len(cands)} candidates with |alpha*beta^2*gamma^2 / 2 - 1| <= {tol:g}, "
         f"{epochs:g} epochs each, proxy base width x{spec.width:g} depth x{spec.depth:g} at {size}px")
    jobs = []
    for c in cands:
        res = max(8, int(round(size * c.gamma / 4)) * 4)
        jobs.append(dict(label=c.label, spec=replace(spec, width=spec.width * c.beta, depth=spec.depth * c.alpha),
                         resolution=res, recipe=recipe, data=data, out_dir=os.path.join(out_dir, c.label),
                         overrides=short))
    results = run_trials(jobs, workers, echo)
    trials = [Trial(c.label, c.alpha, c.beta, c.gamma, round(c.product, 4), j["resolution"], r["params"], r["macs"],
                    r["top1"], round(r["time"], 1)) for c, j, r in zip(cands, jobs, results)]
    best = max(trials, key=lambda t: (t.top1, -t.macs))
    os.makedirs(out_dir, exist_ok=True)
    write_csv(trials, os.path.join(out_dir, "trials.csv"))
    plot_trials(trials, best, os.path.join(out_dir, "search.png"), f"{base}: grid search at phi=1 ({data})")
    return trials, best


def compare(base: str = "efficientnet_b0", data: str = "digits", epochs: float = 4, recipe: str = "demo",
            phis=(1.0, 2.0), alpha=1.2, beta=1.1, gamma=1.15, out_dir: str = "runs/scale_compare",
            workers: int | None = None, echo=print) -> list[Trial]:
    """Width-only, depth-only, resolution-only and compound scaling at the FLOPs budgets 2^phi
    (each single dimension takes the whole growth: d = 2^phi, w = r = 2^(phi/2))."""
    spec, size, rec = _proxy(base, recipe)
    short = _short_schedule(rec, epochs)
    jobs, labels = [], []
    for phi in phis:
        g = 2.0 ** phi
        variants = {"width": (1.0, math.sqrt(g), 1.0), "depth": (g, 1.0, 1.0), "resolution": (1.0, 1.0, math.sqrt(g)),
                    "compound": (alpha ** phi, beta ** phi, gamma ** phi)}
        for kind, (d, w, r) in variants.items():
            res = max(8, int(round(size * r / 4)) * 4)
            label = f"{kind}_phi{phi:g}"
            labels.append((label, d, w, r))
            jobs.append(dict(label=label, spec=replace(spec, width=spec.width * w, depth=spec.depth * d),
                             resolution=res, recipe=recipe, data=data, out_dir=os.path.join(out_dir, label),
                             overrides=short))
    base_job = dict(label="base", spec=spec, resolution=size, recipe=recipe, data=data,
                    out_dir=os.path.join(out_dir, "base"), overrides=short)
    echo(f"compound vs single-dimension scaling of {base} on {data}: budgets 2^phi for phi in {list(phis)}")
    results = run_trials([base_job] + jobs, workers, echo)
    trials = [Trial("base", 1, 1, 1, 1.0, size, results[0]["params"], results[0]["macs"], results[0]["top1"],
                    round(results[0]["time"], 1))]
    for (label, d, w, r), j, res in zip(labels, jobs, results[1:]):
        trials.append(Trial(label, d, w, r, round(d * w * w * r * r, 4), j["resolution"], res["params"], res["macs"],
                            res["top1"], round(res["time"], 1)))
    os.makedirs(out_dir, exist_ok=True)
    write_csv(trials, os.path.join(out_dir, "compare.csv"))
    plot_compare(trials, os.path.join(out_dir, "compare.png"), f"{base}: scaling dimensions at equal FLOPs ({data})")
    return trials


def write_csv(trials: list[Trial], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(asdict(trials[0])))
        w.writeheader()
        for t in trials:
            w.writerow(asdict(t))


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:  # plots are a nicety; the CSV carries the numbers
        return None


def plot_trials(trials: list[Trial], best: Trial, path: str, title: str) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.macs / 1e6 for t in trials], [t.top1 for t in trials], c=[t.alpha for t in trials], cmap="viridis")
    for t in trials:
        ax.annotate(f"{t.alpha:g}/{t.beta:g}/{t.gamma:g}", (t.macs / 1e6, t.top1), fontsize=7,
                    xytext=(3, 3), textcoords="offset points", fontweight="bold" if t is best else "normal")
    ax.set_xlabel("MMACs (proxy model)")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title + f"\nbest alpha/beta/gamma = {best.alpha:g}/{best.beta:g}/{best.gamma:g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(trials: list[Trial], path: str, title: str) -> str | None:
    plt = _plt()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    base = trials[0]
    for kind, marker in (("width", "s"), ("depth", "^"), ("resolution", "o"), ("compound", "*")):
        pts = [base] + [t for t in trials if t.label.startswith(kind + "_")]
        pts.sort(key=lambda t: t.macs)
        ax.plot([t.macs / 1e6 for t in pts], [t.top1 for t in pts], marker=marker, label=kind)
    ax.set_xlabel("MMACs")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
