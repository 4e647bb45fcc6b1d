"""`effnets list`, `effnets info`, `effnets profile`."""
from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style pattern, e.g. 'efficientnet_*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("info", help="model card and stage table")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("profile", help="params, MACs, FLOPs and activation memory")
    p.add_argument("name")
    p.add_argument("--size", type=int, default=None, help="input size (default: the card's test size)")
    p.add_argument("--batch", type=int, default=1)
    p.set_defaults(func=cmd_profile)


def cmd_list(args) -> int:
    from .. import list_models, model_card
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}")
        return 1
    print(f"{'name':<24} {'family':<14} {'size':>5} {'paper params':>13} {'paper top-1':>12}")
    for n in names:
        c = model_card(n)
        p = f"{c.figures.params_m:g}M" if c.figures.params_m else "-"
        t = f"{c.figures.top1:g}" if c.figures.top1 else "-"
        print(f"{n:<24} {c.family:<14} {c.test_size:>5} {p:>13} {t:>12}")
    return 0


def cmd_info(args) -> int:
    from .. import model_card
    from ..registry import get_entry, resolve_spec
    entry = get_entry(args.name)
    print(model_card(args.name))
    if entry.spec is not None:
        print()
        print(resolve_spec(entry.spec, {}))
    return 0


def cmd_profile(args) -> int:
    from .. import profile
    print(profile(args.name, input_size=args.size, batch_size=args.batch))
    return 0
