"""Vision Transformer (Dosovitskiy et al. 2020, arXiv 2010.11929).

Conv patch embedding, a class token, learned 1-D position embeddings, pre-norm encoder blocks
(LayerNorm eps 1e-6 as in the original JAX code, GELU MLP), final LayerNorm, linear head on the
class token.  Module names follow the original / timm layout (``cls_token``, ``pos_embed``,
``patch_embed.proj``, ``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``norm``,
``head``) so those checkpoints map one to one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, check_rate, set_dropout
from ..layers.attention import Attention
from ..layers.head import linear_head
from ..layers.memory import act_linear, checkpoint_enabled, checkpoint_module
from .inputs import check_input

LN_EPS = 1e-6  # original ViT (flax LayerNorm default); PyTorch's default 1e-5 changes logits


def vit_drop_path_rates(rate: float, depth: int) -> list[float]:
    """DeiT / timm schedule: linspace(0, rate, depth), the last block drops ``rate``."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


def resample_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int] | None = None,
                       num_prefix: int = 1) -> torch.Tensor:
    """Resize (1, prefix + H*W, D) position embeddings to another patch grid.

    Bicubic with antialiasing, prefix (class) tokens kept: the resampling the ViT paper
    describes for fine-tuning at higher resolution (§3.2, "2D interpolation"), with the same
    settings as timm's ``resample_abs_pos_embed`` so ported checkpoints give the same logits."""
    n = pos.shape[1] - num_prefix
    if old_grid is None:
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position embeddings")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    dim, dtype = pos.shape[-1], pos.dtype
    grid = grid.float().reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False, antialias=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(dtype)
    return torch.cat([prefix, grid], dim=1)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> D channels by one strided conv (= a shared Linear)."""

    def __init__(self, patch: int, in_chans: int, dim: int):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_chans, dim, patch, patch, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise ValueError(f"input {tuple(x.shape[-2:])} is not divisible by the patch size {self.patch}")
        return self.proj(x)  # (B, D, H/p, W/p)


class Mlp(nn.Module):
    linear_act = ("fc1", "act")  # act reads only fc1's output, right after it: optimize fuses the two

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as the original
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)
        self.memory_efficient: bool | None = None  # None: the global default (layers.memory)

    def forward(self, x):
        h = self.fc1(x)
        if self.drop1.p == 0 or not self.training:  # GELU's output not stored in training (act_linear)
            return self.drop2(act_linear(h, self.act, self.fc2, self))
        return self.drop2(self.fc2(self.drop1(self.act(h))))


class Block(nn.Module):
    """Pre-norm encoder block: x + DP(MSA(LN(x))), then x + DP(MLP(LN(x)))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float = 0.0, drop_path: float = 0.0,
                 attn_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, qkv_bias=True, attn_drop=attn_dropout, proj_drop=dropout)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim, dropout)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT with a class token.

    ``dropout`` is the paper's dropout (after the position embedding and after every dense
    layer except qkv, ViT App. B.1) and also applies before the head; ``drop_path`` is the
    largest stochastic-depth rate (DeiT), spread linearly over the blocks.  Inputs of another
    size than ``img_size`` work: the position embeddings are interpolated on the fly."""

    classifier_name = "head"  # what effnets.weights treats as the classifier

    def __init__(self, *, patch: int, dim: int, depth: int, heads: int, mlp_dim: int, img_size=224,
                 num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        if num_classes < 0 or in_chans < 1:
            raise ValueError(f"num_classes must be >= 0 and in_chans >= 1, got {num_classes}, {in_chans}")
        for k, v in (("dropout", dropout), ("drop_path", drop_path)):
            if not 0 <= v < 1:
                raise ValueError(f"{k} must be in [0, 1), got {v}")
        self.img_size = _pair(img_size)
        if self.img_size[0] % patch or self.img_size[1] % patch:
            raise ValueError(f"img_size {self.img_size} is not divisible by the patch size {patch}")
        self.patch = patch
        self.grid = (self.img_size[0] // patch, self.img_size[1] // patch)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = dim
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid[0] * self.grid[1], dim))
        self.patch_embed = PatchEmbed(patch, in_chans, dim)
        self.pos_drop = nn.Dropout(dropout)
        rates = vit_drop_path_rates(drop_path, depth)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_dim, dropout, rates[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(module=f"blocks.{i}", num_chs=dim, reduction=patch) for i in range(depth)]
        self.init_weights()

    # -- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Truncated normal 0.02 for position embeddings and dense layers (DeiT / timm), the
        patch conv like a dense layer over its fan-in, zero biases; a near-zero class token."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / w[0].numel()))
        nn.init.zeros_(self.patch_embed.proj.bias)

    def remap_checkpoint(self, state_dict: dict) -> dict:
        """timm / original-layout ViT state dict -> ours: same names; the position embeddings
        are resampled to this model's patch grid, timm's empty extras (``fc_norm`` etc. as
        Identity have no keys) need nothing.  torchvision's ``vit_*`` layout is renamed."""
        sd = dict(state_dict)
        if "encoder.pos_embedding" in sd or "conv_proj.weight" in sd:
            sd = _from_torchvision(sd)
        pos = sd.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            sd["pos_embed"] = resample_pos_embed(pos, self.grid, num_prefix=self.num_prefix_tokens)
        return sd

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # plain model.load_state_dict() of a checkpoint made at another size works too
        key = prefix + "pos_embed"
        pos = state_dict.get(key)
        if pos is not None and pos.ndim == 3 and pos.shape[-1] == self.pos_embed.shape[-1] \
                and pos.shape != self.pos_embed.shape:
            state_dict[key] = resample_pos_embed(pos, self.grid, num_prefix=self.num_prefix_tokens)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    # -- regularisation ----------------------------------------------------------------------
    def set_regularization(self, dropout: float | None = None, drop_path: float | None = None) -> None:
        if dropout is not None:
            set_dropout(self, dropout)
        if drop_path is not None:
            check_rate("drop_path", drop_path)
            for b, p in zip(self.blocks, vit_drop_path_rates(drop_path, len(self.blocks))):
                b.drop_path1.p = b.drop_path2.p = p

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = linear_head(self.num_features, num_classes)

    # -- forward -----------------------------------------------------------------------------
    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        B, D, H, W = x.shape
        pos = self.pos_embed
        if (H, W) != self.grid:
            pos = resample_pos_embed(pos, (H, W), self.grid, self.num_prefix_tokens)
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        return self.pos_drop(x + pos)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> normalised tokens (B, 1 + H/p * W/p, D), class token first."""
        x = self._pos_embed(self.patch_embed(x))
        if checkpoint_enabled(self):
            for blk in self.blocks:
                x = checkpoint_module(blk, x)
            return self.norm(x)
        return self.norm(self.blocks(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-block activation checkpointing in training (effnets.layers.memory)."""
        self.grad_checkpointing = bool(enable)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(self, x, multiple=self.patch_embed.patch, min_size=self.patch_embed.patch, allow_empty=False)
        return self.forward_head(self.forward_features(x))


def _from_torchvision(sd: dict) -> dict:
    """torchvision ``VisionTransformer`` keys -> ours (same tensors, qkv already fused)."""
    out = {}
    for k, v in sd.items():
        n = k
        n = n.replace("class_token", "cls_token").replace("conv_proj.", "patch_embed.proj.")
        n = n.replace("encoder.pos_embedding", "pos_embed").replace("encoder.ln.", "norm.")
        n = n.replace("heads.head.", "head.").replace("encoder.layers.encoder_layer_", "blocks.")
        n = n.replace(".ln_1.", ".norm1.").replace(".ln_2.", ".norm2.")
        n = n.replace(".self_attention.in_proj_", ".attn.qkv.").replace(".self_attention.out_proj.", ".attn.proj.")
        n = n.replace(".mlp.linear_1.", ".mlp.fc1.").replace(".mlp.linear_2.", ".mlp.fc2.")
        n = n.replace(".mlp.0.", ".mlp.fc1.").replace(".mlp.3.", ".mlp.fc2.")
        out[n] = v
    return out
