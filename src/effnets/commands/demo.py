"""`effnets demo`: build every registered model, profile efficientnet_b0, print the table."""
from __future__ import annotations

import argparse
import time


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build every model, profile efficientnet_b0, print the model table")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .. import list_models, model_card, profile
    print(f"{'model':<22} {'params':>13} {'paper':>7} {'GMACs@test':>11} {'test':>5} {'profile s':>9}")
    for name in list_models():
        t = time.perf_counter()
        p = profile(name)  # builds on the meta device: shapes only, even L2 in seconds
        took = time.perf_counter() - t
        card = model_card(name)
        paper = f"{card.figures.params_m:g}M" if card.figures.params_m else "-"
        print(f"{name:<22} {p.params:>13,} {paper:>7} {p.macs / 1e9:>11.3f} {card.test_size:>5} {took:>9.2f}")
    print()
    print(profile("efficientnet_b0"))
    return 0
