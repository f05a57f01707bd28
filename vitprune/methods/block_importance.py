"""How much each attention head and MLP hidden channel matters, for block pruning to rank them.

- Taylor: the first-order estimate of the loss change when a unit's gate closes,
  |dL/dξ| = |Σ_{i, j ∈ unit} W_ij ∂L/∂W_ij| over the columns of `attn.proj` (`mlp.fc2`) that
  read the unit (Molchanov et al. 2019; Michel et al. 2019), per batch and accumulated.
- Magnitude (no data): the L2 norm of every weight coupled to the unit (qkv rows + proj columns
  for a head, fc1 row + fc2 column for a channel), as Torch-Pruning's magnitude importance
  groups coupled parameters.
Each returns ([per block: one score per head], [per block: one score per channel]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from timm.layers.attention import Attention
from torch import nn

from vitprune.errors import UserError
from vitprune.methods.block_masks import vit_blocks
from vitprune.torchutil import logits, unwrap


@torch.no_grad()
def magnitude_importance(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """L2 norm of all weights coupled to each head / MLP channel (data-free criterion)."""
    heads, chans = [], []
    for blk in vit_blocks(model):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, Attention):
            h, d = attn.num_heads, attn.head_dim
            sq = attn.qkv.weight.float().pow(2).view(3, h, d, -1).sum(dim=(0, 2, 3))
            if attn.qkv.bias is not None:
                sq += attn.qkv.bias.float().pow(2).view(3, h, d).sum(dim=(0, 2))
            sq += attn.proj.weight.float().pow(2).view(-1, h, d).sum(dim=(0, 2))
            heads.append(sq.sqrt().cpu())
        else:
            heads.append(torch.zeros(0))
        if isinstance(mlp, Mlp):
            sq = mlp.fc1.weight.float().pow(2).sum(1) + mlp.fc2.weight.float().pow(2).sum(0)
            if mlp.fc1.bias is not None:
                sq += mlp.fc1.bias.float().pow(2)
            chans.append(sq.sqrt().cpu())
        else:
            chans.append(torch.zeros(0))
    return heads, chans


@torch.no_grad()
def taylor_scores_from_grads(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """|dL/dξ| per head and channel for the gradient currently in `.grad` (one batch).

    dL/dξ_unit = Σ_{i, j ∈ unit} W_ij ∂L/∂W_ij over the proj (fc2) columns reading the
    unit — Molchanov et al. 2019 eq. 8 applied to a group, Michel et al. 2019 eq. 2.
    Units with no gradient (already pruned, or no backward yet) score 0."""
    heads, chans = [], []
    for blk in vit_blocks(model):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, Attention):
            w = attn.proj.weight
            if w.grad is None:
                heads.append(torch.zeros(attn.num_heads))
            else:
                gw = (w.grad.float() * w.float()).view(w.shape[0], attn.num_heads, attn.head_dim)
                heads.append(gw.sum(dim=(0, 2)).abs().cpu())
        else:
            heads.append(torch.zeros(0))
        if isinstance(mlp, Mlp):
            w = mlp.fc2.weight
            if w.grad is None:
                chans.append(torch.zeros(mlp.fc2.in_features))
            else:
                chans.append((w.grad.float() * w.float()).sum(0).abs().cpu())
        else:
            chans.append(torch.zeros(0))
    return heads, chans


def taylor_importance(model: nn.Module, data, *, loss_fn=None, max_batches: int | None = None,
                      batch_size: int = 32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """First-order Taylor importance summed over the batches of `data`.

    `data`: an iterable of `(images, labels)` batches or a torch Dataset of
    `(image, label)` pairs. `loss_fn(logits, labels)` defaults to cross-entropy. The model
    runs in eval mode (no dropout; a DynamicViT model takes its inference path); its
    parameters' `.grad` are left as they were."""
    model = unwrap(model)
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False)
    loss_fn = loss_fn or F.cross_entropy
    params = [p for p in model.parameters()]
    saved = [p.grad for p in params]
    was_training = model.training
    device = next(model.parameters()).device
    total_h = total_c = None
    n = 0
    try:
        model.eval()
        for images, labels in data:
            if max_batches is not None and n >= max_batches:
                break
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = loss_fn(logits(model(images.to(device))), torch.as_tensor(labels).to(device))
                loss.backward()
            h, c = taylor_scores_from_grads(model)
            total_h = h if total_h is None else [a + b for a, b in zip(total_h, h)]
            total_c = c if total_c is None else [a + b for a, b in zip(total_c, c)]
            n += 1
    finally:
        for p, g in zip(params, saved):
            p.grad = g
        model.train(was_training)
    if n == 0:
        raise UserError("Taylor importance needs at least one batch of (images, labels); `data` was empty")
    return total_h, total_c
