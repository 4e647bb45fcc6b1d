"""Blocks shared by every convnet family; ``BLOCKS`` maps a BlockSpec kind to its class."""
from .bottleneck import Bottleneck
from .common import BlockArgs
from .mbconv import ConvBlock, DepthwiseSeparable, FusedMBConv, MBConv, ResidualBlock

BLOCKS = {
    "conv": ConvBlock,
    "ds": DepthwiseSeparable,
    "mbconv": MBConv,
    "fused": FusedMBConv,
    "bottleneck": Bottleneck,
}

__all__ = ["BLOCKS", "BlockArgs", "Bottleneck", "ConvBlock", "DepthwiseSeparable", "FusedMBConv", "MBConv",
           "ResidualBlock"]
