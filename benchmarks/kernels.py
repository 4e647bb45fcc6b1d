"""Native kernels vs the PyTorch ops they replace (``python benchmarks/kernels.py``).

Times training BatchNorm + SiLU forward + backward on a 16x96x112x112 channels-last tensor
(efficientnet_b0's largest expanded activation at batch 16), in-place SiLU on 9.6M elements,
the depthwise-conv backward (input + weight gradients) summed over efficientnet_b0's twelve
distinct depthwise shapes at batch 16, and the inference depthwise conv + bias + SiLU + channel
means (what ``effnets.optimize`` runs for a depthwise conv and its squeeze-excite's pooling)
over the same shapes at batch 1 and 8, against oneDNN's conv (weights prepacked), SiLU and
``mean``; and the 3x3 stride-1 convs of resnet_rs_50 and efficientnetv2_s by Winograd
F(4x4, 3x3) (``kernels.winograd_conv3x3``) against oneDNN's direct conv (prepacked, ReLU fused,
native SiLU after); the backward of the squeeze-excite gate product over B0's expanded shapes at
batch 16 (``kernels.gate_backward``: dx and the gate's sums in one pass, against ``dy * g`` and
``(dy * x).sum``); B0's 1x1 convs (with their SiLU where the block has one) at batch 1 and 8 on
effnets' GEMM (``kernels.pointwise_conv``, SiLU in the epilogue, outputs into kept buffers as
``effnets.optimize`` does) against oneDNN's conv (prepacked) + native SiLU; B0's squeeze-excite
+ project conv pairs with the gates folded into the GEMM against the native product pass + the
GEMM ("unfolded"); each figure the median of timed calls, in one process."""
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

    def conv3x3(model_shapes, batch):
        """3x3 stride-1 convs + ReLU/SiLU: oneDNN (prepacked; native SiLU after) vs Winograd F(4x4, 3x3)."""
        shapes = []
        for ci, co, hw, act in model_shapes:
            xb = torch.randn(batch, ci, hw, hw).contiguous(memory_format=torch.channels_last)
            wi = (torch.randn(co, ci, 3, 3) / (9 * ci) ** 0.5).contiguous(memory_format=torch.channels_last)
            packed = torch.ops.mkldnn._reorder_convolution_weight(wi, [1, 1], [1, 1], [1, 1], 1, list(xb.shape))
            shapes.append((xb, packed, K.winograd_weight(wi), torch.randn(co), act))

        def onednn():
            with torch.inference_mode():
                for xb, packed, _, bi, act in shapes:
                    yb = torch.ops.mkldnn._convolution_pointwise(xb, packed, bi, [1, 1], [1, 1], [1, 1], 1,
                                                                 "relu" if act == "relu" else "none", [], "")
                    if act == "silu":
                        K.silu_(yb)

        def winograd():
            with torch.inference_mode():
                for xb, _, u, bi, act in shapes:
                    K.winograd_conv3x3(xb, u, bi, (1, 1), act)
        return onednn, winograd

    # the distinct 3x3 stride-1 convs (C_in, C_out, size, act) of resnet_rs_50 at 160 (stem and
    # stages) and of efficientnetv2_s at 300 (Fused-MBConv stages 1-3)
    rs50 = [(32, 32, 80, "relu"), (32, 64, 80, "relu"), (64, 64, 40, "relu"), (128, 128, 20, "relu"),
            (256, 256, 10, "relu"), (512, 512, 5, "relu")]
    v2s = [(24, 24, 150, "silu"), (48, 192, 75, "silu"), (64, 256, 38, "silu")]
    # squeeze-excite gate backward over efficientnet_b0's gated shapes (channels, size) at batch 16
    gates = []
    for ch, hw in [(32, 112), (96, 56), (144, 56), (144, 28), (240, 28), (240, 14), (480, 14), (672, 14),
                   (672, 7), (1152, 7)]:
        xi = torch.randn(16, ch, hw, hw).contiguous(memory_format=torch.channels_last)
        gates.append((torch.randn_like(xi), xi, torch.rand(16, ch, 1, 1)))

    def gate_aten():
        for dy, xi, gi in gates:
            dy * gi, (dy * xi).sum((2, 3), keepdim=True)

    def gate_native():
        for dy, xi, gi in gates:
            K.gate_backward(dy, xi, gi)

    # efficientnet_b0's distinct 1x1 convs (C_in, C_out, size, SiLU?) at 224
    b0_1x1 = [(32, 16, 112, False), (16, 96, 112, True), (96, 24, 56, False), (24, 144, 56, True),
              (144, 24, 56, False), (144, 40, 28, False), (40, 240, 28, True), (240, 40, 28, False),
              (240, 80, 14, False), (80, 480, 14, True), (480, 80, 14, False), (480, 112, 14, False),
              (112, 672, 14, True), (672, 112, 14, False), (672, 192, 7, False), (192, 1152, 7, True),
              (1152, 192, 7, False), (1152, 320, 7, False), (320, 1280, 7, True)]

    def pointwise(batch):
        shapes = []
        for ci, co, hw, silu in b0_1x1:
            xb = torch.randn(batch, ci, hw, hw).contiguous(memory_format=torch.channels_last)
            wi = (torch.randn(co, ci, 1, 1) / ci ** 0.5).contiguous(memory_format=torch.channels_last)
            packed = torch.ops.mkldnn._reorder_convolution_weight(wi, [0, 0], [1, 1], [1, 1], 1, list(xb.shape))
            out = torch.empty(batch, co, hw, hw).contiguous(memory_format=torch.channels_last)
            shapes.append((xb, packed, K.pointwise_weight(wi), torch.randn(co), out, silu))

        def onednn():
            with torch.inference_mode():
                for xb, packed, _, bi, _, silu in shapes:
                    yb = torch.ops.mkldnn._convolution_pointwise(xb, packed, bi, [0, 0], [1, 1], [1, 1], 1, "none",
                                                                 [], "")
                    if silu:
                        K.silu_(yb)

        def native():
            with torch.inference_mode():
                for xb, _, panels, bi, out, silu in shapes:
                    K.pointwise_conv(xb, panels, bi, out.shape[1], "silu" if silu else "identity", out=out)
        return onednn, native

    # efficientnet_b0's squeeze-excite + project 1x1 conv pairs (C_exp, C_out, size, SE width)
    b0_se = [(32, 16, 112, 8), (96, 24, 56, 4), (144, 24, 56, 6), (144, 40, 28, 6), (240, 40, 28, 10),
             (240, 80, 14, 10), (480, 80, 14, 20), (480, 112, 14, 20), (672, 112, 14, 28), (672, 192, 7, 28),
             (1152, 192, 7, 48), (1152, 320, 7, 48)]

    def se_project(batch):
        """The product pass in place + the GEMM (unfolded) vs the gates folded into the GEMM's
        weights per image (``pointwise_conv(gate=)``): the choice ``effnets.optimize`` times per layer."""
        shapes = []
        for ci, co, hw, r in b0_se:
            xb = torch.randn(batch, ci, hw, hw).contiguous(memory_format=torch.channels_last)
            se = (torch.randn(r, ci) / ci ** 0.5, torch.randn(r), torch.randn(ci, r) / r ** 0.5, torch.randn(ci))
            wi = torch.randn(co, ci, 1, 1) / ci ** 0.5
            out = torch.empty(batch, co, hw, hw).contiguous(memory_format=torch.channels_last)
            shapes.append((xb, xb.mean((2, 3)), se, K.pointwise_weight(wi), torch.randn(co), out))

        def unfolded():
            with torch.inference_mode():
                for xb, mean, se, panels, bi, out in shapes:
                    K.se_gate_(xb, mean, *se, "silu", "sigmoid")  # in place: each call scales x again
                    K.pointwise_conv(xb, panels, bi, out.shape[1], out=out)

        def folded():
            with torch.inference_mode():
                for xb, mean, se, panels, bi, out in shapes:
                    g = K.se_gates(mean, *se, "silu", "sigmoid")
                    K.pointwise_conv(xb, panels, bi, out.shape[1], out=out, gate=g)
        return unfolded, folded

    x = torch.randn(9_600_000)
    rows = [("BN+SiLU fwd+bwd 16x96x112x112", plain, native),
            ("SiLU in place, 9.6M elements", lambda: F.silu(x, inplace=True), lambda: K.silu_(x)),
            ("depthwise bwd, B0's 12 shapes b16", dw_aten, dw_native),
            ("SE gate bwd, B0's shapes b16", gate_aten, gate_native),
            ("dw+SiLU+mean inference, b1", *dw_inference(1)),
            ("dw+SiLU+mean inference, b8", *dw_inference(8))]
    if K.pointwise_available():
        rows += [("1x1 convs B0@224, b1", *pointwise(1)), ("1x1 convs B0@224, b8", *pointwise(8)),
                 ("SE+1x1 B0@224, b1", *se_project(1), "unfolded"), ("SE+1x1 B0@224, b8", *se_project(8), "unfolded")]
    if K.winograd_available():
        rows += [("3x3 convs RS-50@160, b1", *conv3x3(rs50, 1)), ("3x3 convs RS-50@160, b8", *conv3x3(rs50, 8)),
                 ("3x3 convs V2-S@300, b1", *conv3x3(v2s, 1)), ("3x3 convs V2-S@300, b8", *conv3x3(v2s, 8))]
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, a, n, *label in rows:
        ta = statistics.median(time_calls(a, cpu, 2, 7)) * 1e3  # PyTorch = its oneDNN kernels here
        tn = statistics.median(time_calls(n, cpu, 2, 7)) * 1e3
        base = (label or ["PyTorch"])[0]
        print(f"  {name:<32} {base:>8} {ta:7.1f} ms   native {tn:7.1f} ms   {ta / tn:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
