"""The gates of block pruning: which heads and MLP channels a timm ViT has, and the masks
that switch them off before anything is cut out (stage 1 of `block_pruning`).

Kept apart from `block_pruning` because every later stage (importance, the schedule, removal,
MAC targets) reads the model through these checks and masks, while none of this needs to
know how units are ranked or when. Gates are forward hooks plus persistent buffers (names in
`pruning_state`), so timm's state-dict keys stay unchanged and a checkpoint of a masked
model holds its masks.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from timm.layers import Mlp
from timm.layers.attention import Attention

from vitprune.errors import UserError
from vitprune.methods import pruning_state
from vitprune.methods.block_removal import NoAttention, NoMlp
from vitprune.torchutil import unwrap

MASK, ALIVE = pruning_state.MASK, pruning_state.ALIVE  # gate buffer names (pruning_state reads them)


# --------------------------------------------------------------------------- geometry

def vit_blocks(model: nn.Module) -> Sequence[nn.Module]:
    """`model.blocks` (under any wrapper), each checked to be a timm ViT block block pruning handles."""
    model = unwrap(model)
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UserError(
            f"{type(model).__name__} has no `blocks`; block pruning works on timm "
            "VisionTransformer-style models (model.blocks[i].attn / .mlp)")
    for i, blk in enumerate(blocks):
        attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
        if not isinstance(attn, (Attention, NoAttention)):
            raise UserError(
                f"block {i}: attention is {type(attn).__name__}, not timm's Attention; "
                "block pruning supports timm ViT/DeiT blocks (timm.layers.Attention + Mlp)")
        if not isinstance(mlp, (Mlp, NoMlp)) or (isinstance(mlp, Mlp) and not isinstance(mlp.fc1, nn.Linear)):
            raise UserError(
                f"block {i}: MLP is {type(mlp).__name__}, not timm's Linear Mlp; "
                "block pruning supports timm ViT/DeiT blocks (timm.layers.Attention + Mlp)")
    return blocks


def num_heads(attn: nn.Module) -> int:
    return int(attn.num_heads)


def num_channels(mlp: nn.Module) -> int:
    return 0 if isinstance(mlp, NoMlp) else int(mlp.fc1.out_features)


def block_spec(model: nn.Module) -> list[dict]:
    """Current per-block widths: `[{"heads": h, "mlp": m}, ...]`."""
    return [{"heads": num_heads(b.attn), "mlp": num_channels(b.mlp)} for b in vit_blocks(model)]


# --------------------------------------------------------------------------- masks

def _gate_input(module: nn.Module, args):
    # forward pre-hook: zero the input slices of pruned units
    return (args[0] * getattr(module, MASK),) + tuple(args[1:])


def _gate_branch(module: nn.Module, args, out):
    # forward hook: the whole branch (bias included) vanishes once every unit is pruned
    return out * getattr(module, ALIVE)


def _masked_layer_norm(module: nn.Module, args, out):
    """LayerNorm over a pruned width: statistics over kept channels only, so that the
    masked model equals the model with those channels removed."""
    m = getattr(module, MASK)
    if bool(m.all()):
        return out
    x = args[0]
    keep = m.sum().clamp_min(1.0)
    mean = (x * m).sum(-1, keepdim=True) / keep
    var = (((x - mean) * m) ** 2).sum(-1, keepdim=True) / keep
    y = (x - mean) * torch.rsqrt(var + module.eps)
    if module.weight is not None:
        y = y * module.weight
    if module.bias is not None:
        y = y + module.bias
    return y * m


_HOOKS = (_gate_input, _gate_branch, _masked_layer_norm)


def _check_norm(norm: nn.Module, where: str) -> bool:
    """True if `norm` normalises over the prunable width and needs masking."""
    if isinstance(norm, nn.Identity):
        return False
    if isinstance(norm, nn.LayerNorm):
        return True
    raise UserError(f"{where} is {type(norm).__name__}; block pruning handles only "
                    "Identity or LayerNorm between the pruned layers")


def _add_mask(module: nn.Module, width: int, pre=None, post=None, alive: bool = False) -> None:
    p = next(module.parameters(), None)
    kw = {"device": p.device if p is not None else None, "dtype": p.dtype if p is not None else None}
    if not hasattr(module, MASK):
        module.register_buffer(MASK, torch.ones(width, **kw))
        if alive:
            module.register_buffer(ALIVE, torch.ones((), **kw))
        if pre is not None:
            module.register_forward_pre_hook(pre)
        if post is not None:
            module.register_forward_hook(post)


def attach_masks(model: nn.Module) -> nn.Module:
    """Install (all-open) head and channel gates on every block; idempotent.

    The masks are persistent buffers, so a training checkpoint of the masked model holds
    them and `models.load_checkpoint` reinstalls the gates before loading it)."""
    for i, blk in enumerate(vit_blocks(model)):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, Attention):
            if attn.gate is not None and not isinstance(attn.gate, nn.Linear):
                raise UserError(f"block {i}: unsupported attention gate {type(attn.gate).__name__}")
            _add_mask(attn.proj, attn.attn_dim, pre=_gate_input, post=_gate_branch, alive=True)
            if _check_norm(attn.norm, f"block {i} attn.norm"):
                _add_mask(attn.norm, attn.attn_dim, post=_masked_layer_norm)
        if isinstance(mlp, Mlp):
            _add_mask(mlp.fc2, mlp.fc1.out_features, pre=_gate_input, post=_gate_branch, alive=True)
            if _check_norm(mlp.norm, f"block {i} mlp.norm"):
                _add_mask(mlp.norm, mlp.fc1.out_features, post=_masked_layer_norm)
    return model


def detach_masks(model: nn.Module) -> nn.Module:
    """Remove every gate hook and mask buffer (the weights are left untouched)."""
    for mod in unwrap(model).modules():
        for hooks in (mod._forward_pre_hooks, mod._forward_hooks):
            for key in [k for k, fn in hooks.items() if fn in _HOOKS]:
                del hooks[key]
        for name in (MASK, ALIVE):
            if name in mod._buffers:
                del mod._buffers[name]
    return model


def has_masks(model: nn.Module) -> bool:
    """True if gates are installed (the model is in its masked, not yet removed, form); False for
    any model without them, a non-ViT timm model too (its state is read by every CLI count)."""
    return any(hasattr(m, MASK) for m in unwrap(model).modules())


def get_masks(model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Boolean keep masks per block: (heads [num_heads], mlp channels [hidden])."""
    heads, chans = [], []
    for blk in vit_blocks(model):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, NoAttention):
            heads.append(torch.zeros(0, dtype=torch.bool))
        elif hasattr(attn.proj, MASK):
            heads.append(getattr(attn.proj, MASK).detach().view(attn.num_heads, attn.head_dim)[:, 0].cpu() > 0)
        else:
            heads.append(torch.ones(attn.num_heads, dtype=torch.bool))
        if isinstance(mlp, NoMlp):
            chans.append(torch.zeros(0, dtype=torch.bool))
        elif hasattr(mlp.fc2, MASK):
            chans.append(getattr(mlp.fc2, MASK).detach().cpu() > 0)
        else:
            chans.append(torch.ones(mlp.fc1.out_features, dtype=torch.bool))
    return heads, chans


@torch.no_grad()
def set_masks(model: nn.Module, heads: Sequence[torch.Tensor], mlp: Sequence[torch.Tensor]) -> None:
    """Set the keep masks (bool or 0/1 tensors per block); installs gates if needed."""
    blocks = vit_blocks(model)
    if len(heads) != len(blocks) or len(mlp) != len(blocks):
        raise UserError(f"got masks for {len(heads)}/{len(mlp)} blocks, the model has {len(blocks)}")
    attach_masks(model)
    for i, blk in enumerate(blocks):
        attn, m = blk.attn, blk.mlp
        if isinstance(attn, Attention):
            hm = torch.as_tensor(heads[i]).flatten()
            if hm.numel() != attn.num_heads:
                raise UserError(f"block {i}: head mask has {hm.numel()} entries, the block has {attn.num_heads} heads")
            full = hm.to(attn.proj.weight).repeat_interleave(attn.head_dim)
            getattr(attn.proj, MASK).copy_(full)
            getattr(attn.proj, ALIVE).fill_(float(bool(hm.any())))
            if hasattr(attn.norm, MASK):
                getattr(attn.norm, MASK).copy_(full)
        if isinstance(m, Mlp):
            cm = torch.as_tensor(mlp[i]).flatten()
            if cm.numel() != m.fc1.out_features:
                raise UserError(f"block {i}: MLP mask has {cm.numel()} entries, the block has {m.fc1.out_features} channels")
            getattr(m.fc2, MASK).copy_(cm.to(m.fc2.weight))
            getattr(m.fc2, ALIVE).fill_(float(bool(cm.any())))
            if hasattr(m.norm, MASK):
                getattr(m.norm, MASK).copy_(cm.to(m.fc2.weight))
