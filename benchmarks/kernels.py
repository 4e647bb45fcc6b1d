"""Native kernels vs the PyTorch ops they replace (``python benchmarks/kernels.py``).

Times training BatchNorm + SiLU forward + backward on a 16x96x112x112 channels-last tensor
(efficientnet_b0's largest expanded activation at batch 16), in-place SiLU on 9.6M elements,
the depthwise-conv backward (input + weight gradients) summed over efficientnet_b0's twelve
distinct depthwise shapes at batch 16, and the inference depthwise conv + bias + SiLU + channel
means (what ``effnets.optimize`` runs for a depthwise conv and its squeeze-excite's pooling)
over the same shapes at batch 1 and 8, against oneDNN's conv (weights prepacked), SiLU and
``mean``; each figure the median of timed calls, in one process."""
from __future__ import annotations

import statistics
import sys

import torch
import torch.nn.functional as F

from effnets import kernels as K
from effnets.measure import time_calls


def main() -> int:
    if K.library() is None:
        print(f"native kernels unavailable: {K.why_unavailable}")
        return 1
    torch.manual_seed(0)
    cpu = torch.device("cpu")
    y = (torch.randn(16, 96, 112, 112) * 2 + 0.5).contiguous(memory_format=torch.channels_last)
    c = y.shape[1]
    w, b = torch.rand(c) + 0.5, torch.randn(c)
    g = torch.randn_like(y)
    rm, rv = torch.zeros(c), torch.ones(c)
    yr, wr, br = (t.clone().requires_grad_() for t in (y, w, b))

    def plain():
        F.silu(F.batch_norm(yr, rm, rv, wr, br, True, 0.1, 1e-3)).backward(g)

    def native():
        _, mean, invstd = K.bn_act_forward(y, w, b, rm, rv, 0.1, 1e-3, "silu")
        K.bn_act_backward(g, y, w, b, mean, invstd, "silu")

    # efficientnet_b0's depthwise convs (channels, size, kernel, stride) at batch 16
    dw = []
    for ch, hw, k, s in [(32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 5, 2), (240, 28, 5, 1),
                         (240, 28, 3, 2), (480, 14, 3, 1), (480, 14, 5, 1), (672, 14, 5, 1), (672, 14, 5, 2),
                         (1152, 7, 5, 1), (1152, 7, 3, 1)]:
        xi = torch.randn(16, ch, hw, hw).contiguous(memory_format=torch.channels_last)
        wi = torch.randn(ch, 1, k, k).contiguous(memory_format=torch.channels_last)
        dy = torch.randn_like(F.conv2d(xi, wi, None, s, k // 2, 1, ch))
        dw.append((dy, xi, wi, s, k // 2))

    def dw_aten():
        for dy, xi, wi, s, p in dw:
            torch.ops.aten.convolution_backward(dy, xi, wi, None, [s, s], [p, p], [1, 1], False, [0, 0],
                                                xi.shape[1], [True, True, False])

    def dw_native():
        for dy, xi, wi, s, p in dw:
            K.depthwise_backward(dy, xi, wi, s, (p, p))

    def dw_inference(batch):
        shapes = []
        for dy, xi, wi, s, p in dw:
            xb = xi[:batch].contiguous(memory_format=torch.channels_last)
            bi = torch.randn(xb.shape[1])
            packed = torch.ops.mkldnn._reorder_convolution_weight(wi, [p, p], [s, s], [1, 1], xb.shape[1],
                                                                  list(xb.shape))
            shapes.append((xb, wi, packed, K.depthwise_taps(wi), bi, s, p))

        def onednn():
            with torch.inference_mode():
                for xb, _, packed, _, bi, s, p in shapes:
                    yb = torch.ops.mkldnn._convolution_pointwise(xb, packed, bi, [p, p], [s, s], [1, 1], xb.shape[1],
                                                                 "none", [], "")
                    K.silu_(yb).mean((2, 3))

        def native():
            with torch.inference_mode():
                for xb, _, _, taps, bi, s, p in shapes:
                    K.depthwise_forward(xb, taps, bi, s, (p, p), "silu", channel_sums=True)
        return onednn, native

    x = torch.randn(9_600_000)
    rows = [("BN+SiLU fwd+bwd 16x96x112x112", plain, native),
            ("SiLU in place, 9.6M elements", lambda: F.silu(x, inplace=True), lambda: K.silu_(x)),
            ("depthwise bwd, B0's 12 shapes b16", dw_aten, dw_native),
            ("dw+SiLU+mean inference, b1", *dw_inference(1)),
            ("dw+SiLU+mean inference, b8", *dw_inference(8))]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, a, n in rows:
        ta = statistics.median(time_calls(a, cpu, 2, 7)) * 1e3  # PyTorch = its oneDNN kernels here
        tn = statistics.median(time_calls(n, cpu, 2, 7)) * 1e3
        print(f"  {name:<32} PyTorch {ta:7.1f} ms   native {tn:7.1f} ms   {ta / tn:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
