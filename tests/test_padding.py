"""TF SAME padding: exact for odd and even sizes, static where it can be."""
import math

import pytest
import torch
import torch.nn.functional as F

from effnets.layers import Conv2dSame, conv2d, same_pad_amount


def tf_same_reference(size, k, s):
    # TF: out = ceil(in / s); total pad = max((out - 1) * s + k - in, 0), extra on the bottom/right
    out = math.ceil(size / s)
    return max((out - 1) * s + k - size, 0)


@pytest.mark.parametrize("size", [7, 8, 15, 16, 97, 224, 225])
@pytest.mark.parametrize("k,s", [(3, 1), (3, 2), (5, 2), (1, 2), (2, 2)])
def test_pad_amount(size, k, s):
    assert same_pad_amount(size, k, s) == tf_same_reference(size, k, s)


@pytest.mark.parametrize("size", [8, 9, 16, 17])
def test_conv_same_matches_manual_asymmetric_pad(size):
    torch.manual_seed(0)
    conv = conv2d(3, 4, 3, 2, padding="same")
    assert isinstance(conv, Conv2dSame)
    x = torch.randn(1, 3, size, size)
    total = tf_same_reference(size, 3, 2)
    ref = F.conv2d(F.pad(x, [total // 2, total - total // 2] * 2), conv.weight, None, 2)
    torch.testing.assert_close(conv(x), ref)
    assert conv(x).shape[-1] == math.ceil(size / 2)


def test_same_is_static_for_stride_one():
    conv = conv2d(3, 4, 5, 1, padding="same")
    assert type(conv) is torch.nn.Conv2d and conv.padding == (2, 2)


def test_symmetric_default():
    conv = conv2d(3, 4, 3, 2)
    assert type(conv) is torch.nn.Conv2d and conv.padding == (1, 1)
    with pytest.raises(ValueError, match="padding"):
        conv2d(3, 4, 3, 2, padding="valid")
