"""Scaling: rounding rules and scale() (core), compound scaling for any base and phi, budget
search and the other papers' strategies (rules), and the law against measurement (law)."""
from .core import Compound, compound, make_divisible, round_channels, round_repeats, scale, scaled_resolution

__all__ = ["Compound", "compound", "make_divisible", "round_channels", "round_repeats", "scale",
           "scaled_resolution"]
