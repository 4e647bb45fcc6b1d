"""The compound-scaling law against measurement.

Predicted FLOPs growth is (alpha * beta^2 * gamma^2)^phi; measured is the MACs of the actually
built network (rounded channels and repeats, rounded resolution) over the base's.  The gap comes
from rounding: channels to multiples of 8 (never below 8), repeats up with ceil (never below 1
per stage), the 10% rule, resolution to multiples of 4, and the parts that do not scale at all
(the stem's input channels, the classifier's classes).  For negative phi the floors dominate
and the network stays larger than predicted, by tens of percent.
"""
from __future__ import annotations

from dataclasses import dataclass

from .core import compound, scale
from .rules import scale_model, scaled_macs, spec_macs

# EfficientNet B1-B7 as released (tensorflow/tpu efficientnet_builder.py::efficientnet_params):
# (width, depth, resolution); the paper calls them phi = 1 .. 7.
OFFICIAL_B = {1: (1.0, 1.1, 240), 2: (1.1, 1.2, 260), 3: (1.2, 1.4, 300), 4: (1.4, 1.8, 380),
              5: (1.6, 2.2, 456), 6: (1.8, 2.6, 528), 7: (2.0, 3.1, 600)}


@dataclass(frozen=True)
class LawRow:
    phi: float
    width: float
    depth: float
    resolution: int
    macs: int
    predicted_growth: float
    measured_growth: float

    @property
    def deviation(self) -> float:
        return self.measured_growth / self.predicted_growth - 1


def law_table(base: str = "efficientnet_b0", phis=(-2, -1, 0, 1, 2, 3, 4), alpha=1.2, beta=1.1, gamma=1.15,
              rule: str = "compound") -> list[LawRow]:
    base_macs = scaled_macs(scale_model(base, 0.0, alpha, beta, gamma, rule))
    rows = []
    for phi in phis:
        s = scale_model(base, float(phi), alpha, beta, gamma, rule)
        macs = scaled_macs(s)
        rows.append(LawRow(phi, s.width, s.depth, s.resolution, macs,
                           compound(phi, alpha, beta, gamma).flops_factor, macs / base_macs))
    return rows


def format_law(rows: list[LawRow], base: str) -> str:
    out = [f"compound scaling of {base}: predicted FLOPs growth (alpha*beta^2*gamma^2)^phi vs measured MACs",
           f"{'phi':>5} {'width':>6} {'depth':>6} {'res':>5} {'GMACs':>9} {'predicted':>10} {'measured':>9} {'dev':>7}"]
    for r in rows:
        out.append(f"{r.phi:>5g} {r.width:>6.3f} {r.depth:>6.3f} {r.resolution:>5} {r.macs / 1e9:>9.4f} "
                   f"{r.predicted_growth:>10.3f} {r.measured_growth:>9.3f} {100 * r.deviation:>+6.1f}%")
    out.append("why they differ: channels round to multiples of 8 (never below 8, never >10% down), repeats "
               "round up (never below 1 per stage), resolution rounds to multiples of 4, and the stem input "
               "and classifier do not scale; the floors matter most for negative phi.")
    return "\n".join(out)


@dataclass(frozen=True)
class OfficialRow:
    phi: int
    official: tuple[float, float, int]
    formula: tuple[float, float, float]
    official_macs: int
    formula_macs: int


def official_table(alpha=1.2, beta=1.1, gamma=1.15) -> list[OfficialRow]:
    """B1-B7 as released vs the formula taken literally (phi = 1..7 from B0 at 224)."""
    from ..registry import get_entry
    base = get_entry("efficientnet_b0").spec
    rows = []
    for phi, (w, d, res) in OFFICIAL_B.items():
        c = compound(phi, alpha, beta, gamma)
        formula_res = int(round(224 * c.resolution / 4)) * 4
        formula = spec_macs(scale(base.replace(width=c.width, depth=c.depth)), formula_res)
        official = spec_macs(scale(base.replace(width=w, depth=d)), res)
        rows.append(OfficialRow(phi, (w, d, res), (c.width, c.depth, 224 * c.resolution), official, formula))
    return rows


def format_official(rows: list[OfficialRow]) -> str:
    out = ["EfficientNet B1-B7: released coefficients vs d=1.2^phi, w=1.1^phi, r=224*1.15^phi",
           f"{'model':>5} {'w':>5} {'w=f':>6} {'d':>5} {'d=f':>6} {'res':>5} {'res=f':>7} "
           f"{'GMACs':>8} {'GMACs=f':>8}"]
    for r in rows:
        (w, d, res), (fw, fd, fr) = r.official, r.formula
        out.append(f"{'B' + str(r.phi):>5} {w:>5.2f} {fw:>6.3f} {d:>5.2f} {fd:>6.3f} {res:>5} {fr:>7.1f} "
                   f"{r.official_macs / 1e9:>8.3f} {r.formula_macs / 1e9:>8.3f}")
    out.append("the released table is hand-rounded: widths and depths grow slower than the formula "
               "(B7: w 2.0 vs 1.95, d 3.1 vs 3.58) and resolutions stay under it (B7: 600 vs 610).")
    return "\n".join(out)
