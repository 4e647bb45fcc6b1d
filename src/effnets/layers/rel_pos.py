"""CoAtNet relative position bias (Dai et al. 2021, arXiv 2106.04803, eq. 3).

Attention logits get a learned scalar w[i - j] per head that depends only on the 2-D offset
between query i and key j.  On an H x W map the offsets span (2H-1) x (2W-1), so each head owns
a table of that size.  When the map size changes (another input size, or a checkpoint trained
at another size) the table is resized by interpolation, which the paper uses when fine-tuning
from 224 to 384/512 (§4, "interpolate" the relative bias).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_rel_pos_table(table: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize a (heads, 2H-1, 2W-1) table to the offsets of an ``size`` = (H', W') map."""
    new = (2 * size[0] - 1, 2 * size[1] - 1)
    if tuple(table.shape[-2:]) == new:
        return table
    dtype = table.dtype
    out = F.interpolate(table.float().unsqueeze(0), size=new, mode=mode, align_corners=False)
    return out.squeeze(0).to(dtype)


def rel_pos_index(h: int, w: int, device=None) -> torch.Tensor:
    """(h*w, h*w) indices into the flattened (2h-1)(2w-1) table for every (query, key) pair."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (h - 1)  # 0 .. 2h-2
    dx = xs[:, None] - xs[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx


class RelPosBias(nn.Module):
    """Per-head relative position bias for a feature map of ``size`` (H, W).

    Parameter ``table``: (heads, 2H-1, 2W-1).  ``forward(h, w)`` returns the (heads, hw, hw)
    additive bias; for another (h, w) the table is interpolated on the fly (gradients reach the
    stored table).  Loading a state dict whose table has another size resizes it to ours."""

    def __init__(self, size: tuple[int, int], num_heads: int, interpolation: str = "bicubic"):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.num_heads = num_heads
        self.interpolation = interpolation
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * self.size[0] - 1, 2 * self.size[1] - 1))
        # the index is derived from the size; kept out of the state dict
        self.register_buffer("index", rel_pos_index(*self.size), persistent=False)

    def forward(self, h: int, w: int) -> torch.Tensor:
        if (h, w) == self.size:
            table, index = self.table, self.index
        else:
            table = resize_rel_pos_table(self.table, (h, w), self.interpolation)
            index = rel_pos_index(h, w, device=table.device)
        return table.flatten(1)[:, index]  # (heads, hw, hw)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + "table"
        t = state_dict.get(key)
        if t is not None and t.ndim == 3 and t.shape[0] == self.num_heads and t.shape != self.table.shape:
            state_dict[key] = resize_rel_pos_table(t, self.size, self.interpolation)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return f"size={self.size}, heads={self.num_heads}, interpolation={self.interpolation}"
