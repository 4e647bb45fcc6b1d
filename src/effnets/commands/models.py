"""`effnets list`, `effnets info`, `effnets profile`."""
from __future__ import annotations

import argparse

from ..errors import ConfigError


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
    p.add_argument("--measure", action="store_true",
                   help="also measure latency, throughput and peak memory (inference and training)")
    p.add_argument("--device", default="cpu", help="device for --measure (cpu, cuda, cuda:1)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations for --measure")
    p.add_argument("--optimized", action="append", default=[], choices=["fp32", "bf16", "bf16_mixed", "int8_dynamic"],
                   help="with --measure: also measure effnets.optimize(model, dtype=...) inference (CPU); repeatable")
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
    if args.optimized and not args.measure:
        raise ConfigError("--optimized adds to --measure: pass --measure too")
    if args.measure:
        from ..measure import measure
        for m in measure(args.name, input_size=args.size, batch_size=args.batch, device=args.device,
                         iters=args.iters, optimized=args.optimized):
            print(f"{'measured ' + m.kind:<20} {m.latency_ms:.2f} ms/batch (p10 {m.latency_p10_ms:.2f}, "
                  f"p90 {m.latency_p90_ms:.2f}), {m.images_per_s:.1f} images/s, peak "
                  f"{m.peak_memory_bytes / 2**20:.1f} MiB [{m.device}, {m.threads} threads]")
    return 0
