"""Shared layers: activations, convolutions with padding conventions, SE, drop path."""
from .act import ACT_NAMES, make_act
from .conv import Conv2dSame, ConvNormAct, batch_norm, conv2d, init_conv_
from .drop import DropPath, check_rate, drop_path, linear_schedule, set_dropout, stage_schedule
from .padding import pad_same, same_pad_amount
from .se import SqueezeExcite

__all__ = ["ACT_NAMES", "make_act", "init_conv_", "set_dropout", "check_rate", "Conv2dSame", "ConvNormAct", "batch_norm", "conv2d", "DropPath",
           "drop_path", "linear_schedule", "stage_schedule", "pad_same", "same_pad_amount", "SqueezeExcite"]
