"""Multi-head self-attention on token sequences (B, N, C), shared by ViT and CoAtNet.

Two numerically equivalent paths:
  fused  ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available)
  plain  explicit ``softmax(q k^T * scale + bias) v``, for exporters and tools that do not know SDPA.
Which one runs: the module's ``fused`` attribute when it is True/False, else the global default
(``set_fused_attention``).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

_FUSED_DEFAULT = True


def set_fused_attention(enabled: bool) -> None:
    """Global default for every Attention whose own ``fused`` is None."""
    global _FUSED_DEFAULT
    _FUSED_DEFAULT = bool(enabled)


def fused_attention_enabled() -> bool:
    return _FUSED_DEFAULT


@contextlib.contextmanager
def fused_attention(enabled: bool) -> Iterator[None]:
    """``with fused_attention(False): torch.onnx.export(...)``: temporarily switch the default."""
    old = _FUSED_DEFAULT
    set_fused_attention(enabled)
    try:
        yield
    finally:
        set_fused_attention(old)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear -> per-head attention (+ optional additive
    bias of shape (heads, N, N) or (B, heads, N, N)) -> ``proj`` Linear.

    ``dim_out`` may differ from ``dim`` (CoAtNet's downsampling blocks map D_in -> D_out inside
    attention).  The qkv output is laid out (3, heads, head_dim) along channels, the layout of
    the original ViT and of timm, so their checkpoints load without permutation."""

    def __init__(self, dim: int, num_heads: int, dim_out: int | None = None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, fused: bool | None = None):
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % num_heads:
            raise ValueError(f"attention width {dim_out} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused = fused
        self.qkv = nn.Linear(dim, dim_out * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)

    def use_fused(self) -> bool:
        return _FUSED_DEFAULT if self.fused is None else bool(self.fused)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if bias is not None:
            bias = bias.to(q.dtype)
        if self.use_fused():
            p = self.attn_drop.p if self.training else 0.0
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                attn = attn + bias
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        x = x.transpose(1, 2).reshape(B, N, -1)
        return self.proj_drop(self.proj(x))

    def profile_macs(self, inputs, out: torch.Tensor) -> int:
        """Multiply-adds of the two attention matmuls (q k^T and attn v), which no Linear
        hook sees; qkv and proj are Linear layers and counted by the profiler itself."""
        B, N, _ = inputs[0].shape
        return 2 * B * self.num_heads * N * N * self.head_dim

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, fused={self.fused}"
