"""Cutting pruned heads and MLP channels out of timm layers (the removal stage of block pruning).

`shrink_attention` keeps the given heads of a timm `Attention` (rows of `qkv`, columns of
`proj`, `num_heads` / `attn_dim` updated, `head_dim` and `scale` unchanged, as timm 1.0's
`Attention(attn_head_dim=...)` allows); `shrink_mlp` keeps the given hidden channels of a
timm `Mlp`. A branch with nothing left becomes `NoAttention` / `NoMlp`, which output zeros
(the residual carries the tokens through). `block_pruning` decides what to keep.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from timm.layers import Mlp
from timm.layers.attention import Attention


class NoAttention(nn.Module):
    """Attention branch of a block whose heads were all pruned: outputs zeros.

    Keeps the geometry attributes other code reads (`num_heads == 0`, `head_dim`,
    `scale`, `attn_dim == 0`) so it can be recognised without isinstance checks.
    """

    def __init__(self, dim_out: int, head_dim: int):
        super().__init__()
        self.num_heads = 0
        self.head_dim = head_dim
        self.attn_dim = 0
        self.dim_out = dim_out
        self.scale = head_dim ** -0.5
        self.fused_attn = False

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.dim_out)

    def extra_repr(self) -> str:
        return f"num_heads=0, dim_out={self.dim_out}"


class NoMlp(nn.Module):
    """MLP branch of a block whose hidden channels were all pruned: outputs zeros."""

    def __init__(self, dim_out: int):
        super().__init__()
        self.hidden_features = 0
        self.dim_out = dim_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.dim_out)

    def extra_repr(self) -> str:
        return f"hidden_features=0, dim_out={self.dim_out}"


def linear_subset(src: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    w = src.weight
    if rows is not None:
        w = w[rows.to(w.device)]
    if cols is not None:
        w = w[:, cols.to(w.device)]
    out = nn.Linear(w.shape[1], w.shape[0], bias=src.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        out.weight.copy_(w)
        if src.bias is not None:
            out.bias.copy_(src.bias if rows is None else src.bias[rows.to(w.device)])
    out.weight.requires_grad_(src.weight.requires_grad)
    if out.bias is not None:
        out.bias.requires_grad_(src.bias.requires_grad)
    return out


def layer_norm_subset(src: nn.LayerNorm, idx: torch.Tensor) -> nn.LayerNorm:
    """A copy of `src` (same class, eps, affinity) over the channels `idx` only."""
    out = copy.deepcopy(src)
    out.normalized_shape = (len(idx),)
    with torch.no_grad():
        for name in ("weight", "bias"):
            p = getattr(src, name, None)
            if isinstance(p, nn.Parameter):
                setattr(out, name, nn.Parameter(p[idx.to(p.device)].clone(), requires_grad=p.requires_grad))
    return out


def shrink_attention(attn: Attention, keep: torch.Tensor) -> nn.Module:
    """Keep heads `keep` (sorted indices) of a timm Attention; in place, or NoAttention."""
    if len(keep) == 0:
        return NoAttention(attn.proj.out_features, attn.head_dim)
    if len(keep) == attn.num_heads and torch.equal(keep, torch.arange(attn.num_heads)):
        return attn
    d = attn.head_dim
    chan = (keep[:, None] * d + torch.arange(d)).flatten()  # channels of kept heads
    rows = torch.cat([s * attn.attn_dim + chan for s in range(3)])  # q, k, v blocks of qkv
    attn.qkv = linear_subset(attn.qkv, rows=rows)
    attn.proj = linear_subset(attn.proj, cols=chan)
    if attn.gate is not None:
        attn.gate = linear_subset(attn.gate, rows=chan)
    if isinstance(attn.norm, nn.LayerNorm):
        attn.norm = layer_norm_subset(attn.norm, chan)
    attn.num_heads = len(keep)
    attn.attn_dim = len(keep) * d  # head_dim and scale unchanged
    return attn


def shrink_mlp(mlp: Mlp, keep: torch.Tensor) -> nn.Module:
    if len(keep) == 0:
        return NoMlp(mlp.fc2.out_features)
    if len(keep) == mlp.fc1.out_features and torch.equal(keep, torch.arange(len(keep))):
        return mlp
    mlp.fc1 = linear_subset(mlp.fc1, rows=keep)
    mlp.fc2 = linear_subset(mlp.fc2, cols=keep)
    if isinstance(mlp.norm, nn.LayerNorm):
        mlp.norm = layer_norm_subset(mlp.norm, keep)
    return mlp
