"""Networks as data: frozen dataclasses for blocks, stages, conventions and whole nets.

A ``NetSpec`` describes a convnet in the units of its paper (base channels, repeats,
expansion ratios) plus the width/depth multipliers still to apply.  ``scaling.scale``
turns it into a *concrete* spec (multipliers folded into integer channels and repeats),
which is what ``nets.convnet.ConvNet`` builds and what ``str(spec)`` prints as a table.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

BlockKind = Literal["conv", "ds", "mbconv", "fused", "bottleneck"]

_BLOCK_KINDS = ("conv", "ds", "mbconv", "fused", "bottleneck")


@dataclass(frozen=True)
class BlockSpec:
    """One row of a stage table: ``repeats`` identical blocks (only the first strides).

    kind:
      conv        plain conv-norm-act (MobileNetV3's last 1x1 conv)
      ds          depthwise-separable: dw kxk -> (SE) -> pw 1x1 (MobileNetV1, MBConv1)
      mbconv      inverted residual: pw expand -> dw kxk -> (SE) -> pw project
      fused       Fused-MBConv: kxk expand -> (SE) -> pw project; expand 1 = one kxk conv
      bottleneck  ResNet bottleneck 1x1 -> kxk -> 1x1 (x4) with optional SE on the output
    """

    kind: BlockKind
    out_chs: int
    repeats: int = 1
    kernel: int = 3
    stride: int = 1
    expand: float = 1.0
    se: float = 0.0  # squeeze-excite ratio, 0 = none
    act: str | None = None  # None: the net's default activation
    skip: bool = True  # residual when stride 1 and in == out
    pw_act: bool = False  # ds: activation after the pointwise conv (MobileNetV1)

    def __post_init__(self) -> None:
        if self.kind not in _BLOCK_KINDS:
            raise ValueError(f"unknown block kind {self.kind!r}; expected one of {_BLOCK_KINDS}")
        if self.repeats < 1 or self.out_chs < 1 or self.stride < 1 or self.kernel < 1:
            raise ValueError(f"block {self} needs repeats, out_chs, stride and kernel >= 1")
        if self.expand <= 0 or self.se < 0:
            raise ValueError(f"block {self}: expand must be > 0 and se >= 0")


@dataclass(frozen=True)
class StageSpec:
    """A stage: consecutive block rows at one resolution (the first row may stride)."""

    rows: tuple[BlockSpec, ...]

    @property
    def stride(self) -> int:
        s = 1
        for r in self.rows:
            s *= r.stride
        return s

    @property
    def out_chs(self) -> int:
        return self.rows[-1].out_chs

    @property
    def num_blocks(self) -> int:
        return sum(r.repeats for r in self.rows)


@dataclass(frozen=True)
class StemSpec:
    """kind ``conv``: one kxk conv. kind ``deep``: ResNet-D stem, 3x3 convs of ``widths``
    (the first strided), then ``pool``: ``max`` (3x3/2 max-pool), ``conv`` (3x3/2 conv,
    ResNet-RS) or ``none``.  ``scale`` False keeps the width fixed under width multipliers."""

    out_chs: int
    kind: Literal["conv", "deep"] = "conv"
    kernel: int = 3
    stride: int = 2
    widths: tuple[int, ...] = ()
    pool: Literal["none", "max", "conv"] = "none"
    scale: bool = True
    act: str | None = None


@dataclass(frozen=True)
class HeadSpec:
    """kind ``conv``: 1x1 conv-norm-act to ``chs`` then pool (EfficientNet, MobileNetV2).
    kind ``pool_conv``: pool, then 1x1 conv with bias and activation, no norm (MobileNetV3).
    kind ``none``: pool the last stage directly (MobileNetV1, ResNet).
    rule: how width scales the head: ``scale``, ``max`` (max(chs, scaled), MobileNetV2) or ``fixed``."""

    chs: int = 0
    kind: Literal["conv", "pool_conv", "none"] = "conv"
    rule: Literal["scale", "max", "fixed"] = "scale"
    act: str | None = None


@dataclass(frozen=True)
class Conventions:
    """Settings on which codebases differ; each one is explicit here.

    ch_divisor / ch_round_limit: channels round to multiples of the divisor, never below
      ``round_limit`` x the unrounded value (0.9 is the "no more than 10% down" rule of the
      TF EfficientNet/MobileNet code; 0 disables it as in EfficientNetV2).
    depth_round: ``ceil`` (official EfficientNet) or ``round`` per row.
    se_base: SE width from the block ``input`` (EfficientNet/MnasNet) or the ``expanded`` width
      (MobileNetV3).  se_divisor: 1 = ``int(base*ratio)``; 8 = made divisible by 8 (MobileNetV3).
    se_act / se_gate: activation inside SE (None = the block's) and the gate.
    bn_eps / bn_momentum: PyTorch semantics (TF momentum 0.99 == PyTorch 0.01).
    padding: ``symmetric`` ((k-1)//2 each side) or ``same`` (TensorFlow SAME, asymmetric when
      needed, exact for any input size).
    drop_path_schedule: ``linear`` (rate * block_idx / num_blocks over the whole net, as in the
      TF and timm code) or ``stage`` (ResNet-RS: rate * (stage_idx + 2) / (num_stages + 1)).
    """

    act: str = "silu"
    ch_divisor: int = 8
    ch_round_limit: float = 0.9
    depth_round: Literal["ceil", "round"] = "ceil"
    se_base: Literal["input", "expanded"] = "input"
    se_divisor: int = 1
    se_act: str | None = None
    se_gate: str = "sigmoid"
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    padding: Literal["symmetric", "same"] = "symmetric"
    drop_path_schedule: Literal["linear", "stage"] = "linear"
    zero_init_last: bool = False  # zero gamma of the last BN of residual blocks (ResNet-RS)
    avg_down: bool = False  # ResNet-D: average-pool shortcut when striding

    def __post_init__(self) -> None:
        if self.padding not in ("symmetric", "same"):
            raise ValueError(f"padding must be 'symmetric' or 'same', got {self.padding!r}")
        if self.bn_eps <= 0:
            raise ValueError(f"bn_eps must be > 0, got {self.bn_eps}")
        if not 0 <= self.bn_momentum <= 1:
            raise ValueError(f"bn_momentum must be in [0, 1] (PyTorch semantics), got {self.bn_momentum}")


@dataclass(frozen=True)
class NetSpec:
    """A whole convnet. ``width``/``depth`` are the multipliers still to apply; a spec
    returned by ``scaling.scale`` has both at 1.0 and ``concrete`` True."""

    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec
    conv: Conventions = field(default_factory=Conventions)
    width: float = 1.0
    depth: float = 1.0
    resolution: int = 224
    dropout: float = 0.0
    drop_path: float = 0.0
    stage_depth: tuple[float, ...] = ()  # extra per-stage depth factors (EfficientNetV2-style scaling)
    concrete: bool = False

    def replace(self, **changes) -> "NetSpec":
        return replace(self, **changes)

    @property
    def num_blocks(self) -> int:
        return sum(s.num_blocks for s in self.stages)

    def __str__(self) -> str:
        return format_table(self)


def format_table(spec: NetSpec) -> str:
    """The per-stage table a reader compares with the paper."""
    lines = []
    state = "concrete" if spec.concrete else f"width x{spec.width:g}, depth x{spec.depth:g} (unscaled)"
    lines.append(f"NetSpec [{state}] resolution {spec.resolution}, dropout {spec.dropout:g}, "
                 f"drop_path {spec.drop_path:g}, act {spec.conv.act}, padding {spec.conv.padding}")
    st = spec.stem
    stem_desc = f"conv{st.kernel}x{st.kernel}/{st.stride}" if st.kind == "conv" else \
        f"deep {'-'.join(map(str, st.widths))} pool={st.pool}"
    header = f"{'stage':>5} {'block':<11} {'k':>2} {'s':>2} {'exp':>5} {'se':>5} {'out':>5} {'n':>3}"
    lines.append(header)
    lines.append(f"{'stem':>5} {stem_desc:<30} {st.out_chs:>5} {1:>3}")
    for i, stage in enumerate(spec.stages):
        for j, r in enumerate(stage.rows):
            label = str(i) if j == 0 else ""
            se = f"{r.se:g}" if r.se else "-"
            lines.append(f"{label:>5} {r.kind:<11} {r.kernel:>2} {r.stride:>2} {r.expand:>5g} {se:>5} "
                         f"{r.out_chs:>5} {r.repeats:>3}")
    h = spec.head
    if h.kind != "none":
        lines.append(f"{'head':>5} {h.kind:<30} {h.chs:>5} {1:>3}")
    lines.append(f"total blocks: {spec.num_blocks}")
    return "\n".join(lines)


def conventions_fields() -> tuple[str, ...]:
    return tuple(f.name for f in fields(Conventions))
