"""`effnets scale` (one scaled model, or the largest that fits a MACs budget) and
`effnets scale-law` (the law against measurement, and the official B1-B7 table)."""
from __future__ import annotations

import argparse

from ..errors import ConfigError


def parse_macs(text: str) -> float:
    """'0.4G', '400M', '4e8' -> MACs."""
    t = text.strip().upper()
    mult = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(t[-1:], 1.0)
    try:
        value = float(t[:-1] if t[-1:] in "KMGT" else t) * mult
    except ValueError:
        raise ConfigError(f"--budget-macs takes a number with an optional K/M/G suffix (e.g. 0.4G), got {text!r}") from None
    return value


def _add_rule_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--alpha", type=float, default=1.2, help="depth base (default 1.2, EfficientNet paper)")
    p.add_argument("--beta", type=float, default=1.1, help="width base (default 1.1)")
    p.add_argument("--gamma", type=float, default=1.15, help="resolution base (default 1.15)")
    p.add_argument("--rule", default="compound", help="compound | v2 | resnet-rs | efficientnet-rs")
    p.add_argument("--regime", default="long", help="resnet-rs rule: long (scale depth) or short (scale width)")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale", help="scale a base network by phi, or to a MACs budget")
    p.add_argument("base", help="a stage-based model, e.g. efficientnet_b0, mobilenet_v2, resnet_rs_50")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--phi", type=float, help="compound coefficient (negative and fractional allowed)")
    g.add_argument("--budget-macs", help="pick the largest phi whose measured MACs fit, e.g. 0.4G")
    _add_rule_args(p)
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("scale-law", help="predicted vs measured MACs growth, and the official B1-B7 table")
    p.add_argument("base", nargs="?", default="efficientnet_b0")
    p.add_argument("--phis", default="-2,-1,0,1,2,3,4", help="comma-separated phi values")
    _add_rule_args(p)
    p.set_defaults(func=cmd_law)
    add_search_commands(sub)


def _floats(text: str | None, what: str):
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{what} takes comma-separated numbers, got {text!r}") from None


def _add_search_args(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("base", nargs="?", default="efficientnet_b0")
    p.add_argument("--data", default="digits", help="digits, synthetic, or a folder with train/ and val/")
    p.add_argument("--budget-epochs", type=float, default=4, help="proxy training epochs per candidate")
    p.add_argument("--recipe", default="demo", help="proxy recipe (its model_args set the proxy base size)")
    p.add_argument("--workers", type=int, default=None, help="parallel trainings (default: cores // 2)")
    p.add_argument("--out", default=default_out)


def add_search_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scale-search", help="grid-search alpha, beta, gamma at phi=1 (paper step 1)")
    _add_search_args(p, "runs/scale_search")
    p.add_argument("--grid", default="reduced", help="reduced (11 triples) or full (every 0.05 step in [1, 2])")
    p.add_argument("--alphas", help="comma-separated depth values (overrides --grid)")
    p.add_argument("--betas", help="comma-separated width values")
    p.add_argument("--gammas", help="comma-separated resolution values")
    p.add_argument("--tol", type=float, default=None, help="relative tolerance on alpha*beta^2*gamma^2 = 2")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("scale-compare", help="compound vs width/depth/resolution-only scaling at equal FLOPs")
    _add_search_args(p, "runs/scale_compare")
    p.add_argument("--phis", default="1,2", help="FLOPs budgets 2^phi, comma-separated")
    p.set_defaults(func=cmd_compare)


def cmd_search(args) -> int:
    from ..scaling.search import REDUCED_GRID, REDUCED_TOL, full_grid_values, search
    if args.grid not in ("reduced", "full"):
        raise ConfigError(f"--grid must be 'reduced' or 'full', got {args.grid!r}")
    values = REDUCED_GRID if args.grid == "reduced" else dict(alphas=full_grid_values(), betas=full_grid_values(),
                                                                gammas=full_grid_values())
    tol = args.tol if args.tol is not None else (REDUCED_TOL if args.grid == "reduced" else 0.02)
    trials, best = search(args.base, args.data, args.budget_epochs, args.recipe,
                          _floats(args.alphas, "--alphas") or values["alphas"],
                          _floats(args.betas, "--betas") or values["betas"],
                          _floats(args.gammas, "--gammas") or values["gammas"], tol, args.out, args.workers)
    print(f"best: alpha={best.alpha:g} beta={best.beta:g} gamma={best.gamma:g} "
          f"(alpha*beta^2*gamma^2 = {best.product:.3f}), top-1 {best.top1:.2f}%, {best.macs / 1e6:.2f} MMACs")
    print(f"trials: {args.out}/trials.csv   plot: {args.out}/search.png")
    return 0


def cmd_compare(args) -> int:
    from ..scaling.search import compare
    trials = compare(args.base, args.data, args.budget_epochs, args.recipe, _floats(args.phis, "--phis"),
                     out_dir=args.out, workers=args.workers)
    print(f"{'variant':<20} {'MMACs':>8} {'top-1':>7}")
    for t in trials:
        print(f"{t.label:<20} {t.macs / 1e6:>8.2f} {t.top1:>7.2f}")
    print(f"results: {args.out}/compare.csv   plot: {args.out}/compare.png")
    return 0


def cmd_scale(args) -> int:
    from ..profiling import profile
    from ..scaling.rules import fit_budget, scale_model, scaled_macs
    kw = dict(alpha=args.alpha, beta=args.beta, gamma=args.gamma, rule=args.rule, regime=args.regime)
    if args.budget_macs is not None:
        budget = parse_macs(args.budget_macs)
        scaled, macs = fit_budget(args.base, budget, **kw)
        print(f"budget {budget / 1e9:.4g} GMACs -> phi {scaled.phi:g}: {macs / 1e9:.4g} GMACs "
              f"({100 * macs / budget:.1f}% of the budget)")
    else:
        scaled = scale_model(args.base, args.phi, **kw)
        macs = scaled_macs(scaled)
    p = profile(scaled.name)
    print(f"name: {scaled.name}   (use with create_model / effnets train --model)")
    print(f"multipliers: width x{scaled.width:.4f}, depth x{scaled.depth:.4f}, resolution {scaled.resolution}")
    print(scaled.spec)
    print(f"params {p.params:,}  MACs {macs / 1e9:.4f} G @ {scaled.resolution}px  "
          f"activations {p.activation_bytes / 2**20:.1f} MiB (batch 1, train)")
    return 0


def cmd_law(args) -> int:
    from ..scaling.law import format_law, format_official, law_table, official_table
    try:
        phis = [float(x) for x in args.phis.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--phis takes comma-separated numbers, got {args.phis!r}") from None
    print(format_law(law_table(args.base, phis, args.alpha, args.beta, args.gamma, args.rule), args.base))
    if args.base == "efficientnet_b0" and args.rule == "compound":
        print()
        print(format_official(official_table(args.alpha, args.beta, args.gamma)))
    return 0
