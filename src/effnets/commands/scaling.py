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
