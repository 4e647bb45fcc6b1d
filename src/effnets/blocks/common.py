"""What every convnet block needs: resolved widths and a residual with drop path."""
from __future__ import annotations

from dataclasses import dataclass

from ..layers import DropPath, SqueezeExcite
from ..scaling import make_divisible
from ..spec import BlockSpec, Conventions


@dataclass(frozen=True)
class BlockArgs:
    """Everything a block is built from: its row, its input width and stride (only the
    first block of a row strides), the net's conventions and its drop-path rate."""

    row: BlockSpec
    in_chs: int
    stride: int
    conv: Conventions
    drop_path: float = 0.0

    @property
    def act(self) -> str:
        return self.row.act or self.conv.act

    @property
    def out_chs(self) -> int:
        return self.row.out_chs

    @property
    def mid_chs(self) -> int:
        """Expanded width: in * expand, made divisible by the channel divisor."""
        if self.row.expand == 1:
            return self.in_chs
        return make_divisible(self.in_chs * self.row.expand, self.conv.ch_divisor)

    @property
    def has_skip(self) -> bool:
        return self.row.skip and self.stride == 1 and self.in_chs == self.out_chs

    def norm_act(self, act: str | None = "block") -> dict:
        """Keyword arguments for ConvNormAct following the conventions."""
        return dict(act=self.act if act == "block" else act, padding=self.conv.padding,
                    bn_eps=self.conv.bn_eps, bn_momentum=self.conv.bn_momentum)

    def make_se(self, chs: int) -> SqueezeExcite | None:
        """SE on ``chs`` channels, reduced from the block input or expanded width (conventions)."""
        if self.row.se <= 0:
            return None
        base = self.in_chs if self.conv.se_base == "input" else chs
        if self.conv.se_divisor > 1:
            rd = make_divisible(base * self.row.se, self.conv.se_divisor)
        else:
            rd = max(1, int(base * self.row.se))
        return SqueezeExcite(chs, rd, act=self.conv.se_act or self.act, gate=self.conv.se_gate)

    def make_drop_path(self) -> DropPath | None:
        """A DropPath on every residual branch (p may be 0 and changed later)."""
        return DropPath(self.drop_path) if self.has_skip else None
