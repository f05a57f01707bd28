"""The one place a model's pruning state is read and written (bottom layer: imports torchutil).

A pruned model carries its state as plain JSON-able attributes on the bare model (under any
DDP / torch.compile wrapper), so a checkpoint can store it and rebuild the model:

* token pruning (DynamicViT, `token_pruning.attach`): its schedule config, a dict;
* training-free token pruning (EViT-style, `training_free.apply`): its schedule config, a dict;
* block pruning after removal (`block_pruning.remove` / `prune_to` / `apply_spec`): the
  per-block widths `[{"heads": h, "mlp": m}, ...]`;
* block pruning before removal (`block_pruning.attach_masks`): gate buffers named `MASK` /
  `ALIVE` on the gated layers (their values are in the state dict).

`snapshot(model)` returns all of it; `models.save_checkpoint` stores it and
`models.load_checkpoint` re-applies it before loading the weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch.nn as nn

from vitprune.torchutil import unwrap

TOKEN_ATTR = "vitprune_token_pruning"
TRAINING_FREE_ATTR = "vitprune_training_free"
MERGING_ATTR = "vitprune_merging"
BLOCK_SPEC_ATTR = "vitprune_block_spec"
MASK = "vitprune_unit_mask"  # buffer on attn.proj / mlp.fc2 (and attn.norm / mlp.norm): 1 keep, 0 pruned
ALIVE = "vitprune_branch_alive"  # scalar buffer on attn.proj / mlp.fc2: 0 once every unit is pruned

# keys of snapshot(), in the order load_checkpoint re-applies them
KINDS = ("block_spec", "block_masks", "token_pruning", "training_free", "merging")


def token(model: nn.Module) -> dict[str, Any] | None:
    """DynamicViT config of `model` (None: no token pruning attached)."""
    return getattr(unwrap(model), TOKEN_ATTR, None)


def set_token(model: nn.Module, cfg: dict[str, Any]) -> None:
    setattr(unwrap(model), TOKEN_ATTR, cfg)


def training_free(model: nn.Module) -> dict[str, Any] | None:
    """Training-free (EViT-style) config of `model` (None: not applied)."""
    return getattr(unwrap(model), TRAINING_FREE_ATTR, None)


def set_training_free(model: nn.Module, cfg: dict[str, Any]) -> None:
    setattr(unwrap(model), TRAINING_FREE_ATTR, cfg)


def merging(model: nn.Module) -> dict[str, Any] | None:
    """ToMe merging config of `model` ({"r": [merges per block]}; None: not applied)."""
    return getattr(unwrap(model), MERGING_ATTR, None)


def block_spec(model: nn.Module) -> list[dict[str, int]] | None:
    """Per-block widths recorded when heads/channels were removed (None: nothing removed)."""
    return getattr(unwrap(model), BLOCK_SPEC_ATTR, None)


def set_block_spec(model: nn.Module, spec: list[dict[str, int]]) -> None:
    setattr(unwrap(model), BLOCK_SPEC_ATTR, spec)


def has_block_masks(model: nn.Module) -> bool:
    """True if block-pruning gates are installed (the masked, not yet removed, form)."""
    return any(MASK in m._buffers for m in unwrap(model).modules())


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Every kind of pruning state of `model` as plain values (copies), keyed by `KINDS`:
    block_spec (list or None), block_masks (bool), token_pruning / training_free / merging (dict or None)."""
    spec, tok, free, merge = block_spec(model), token(model), training_free(model), merging(model)
    return {
        "block_spec": [dict(s) for s in spec] if spec is not None else None,
        "block_masks": has_block_masks(model),
        "token_pruning": copy.deepcopy(dict(tok)) if tok is not None else None,
        "training_free": copy.deepcopy(dict(free)) if free is not None else None,
        "merging": copy.deepcopy(dict(merge)) if merge is not None else None,
    }


def is_pruned(model: nn.Module) -> bool:
    """True if any pruning (token, training-free, merging, block masks or removal) is applied."""
    state = snapshot(model)
    return bool(state["block_masks"]) or any(state[k] is not None for k in KINDS if k != "block_masks")
