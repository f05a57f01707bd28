"""The one place a model's pruning state is read and written (bottom layer: imports torchutil).

A pruned model carries its state as plain JSON-able attributes on the bare model (under any
DDP / torch.compile wrapper), so a checkpoint can store it and rebuild the model:

* token pruning (DynamicViT, `dynamicvit.attach`): its schedule config, a dict;
* training-free token pruning (CLS-attention top-k, `training_free.apply`): its schedule config, a dict;
* token merging (ToMe, `merging.apply`) and EViT (`evit.apply`): their configs, dicts;
* block pruning after removal (`block_pruning.remove` / `prune_to` / `apply_spec`): the
  per-block widths `[{"heads": h, "mlp": m}, ...]`;
* block pruning before removal (`block_masks.attach_masks`): gate buffers named `MASK` /
  `ALIVE` on the gated layers (their values are in the state dict).

Each method's `Method.state` reads its part; `registry.method_state` gathers them for
`models.save_checkpoint`, and `registry.restore` re-applies them in `models.load_checkpoint`.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from vitprune.errors import UserError
from vitprune.torchutil import unwrap

DYNAMICVIT_ATTR = "vitprune_dynamicvit"
TRAINING_FREE_ATTR = "vitprune_training_free"
MERGING_ATTR = "vitprune_merging"
EVIT_ATTR = "vitprune_evit"
BLOCK_SPEC_ATTR = "vitprune_block_spec"
MASK = "vitprune_unit_mask"  # buffer on attn.proj / mlp.fc2 (and attn.norm / mlp.norm): 1 keep, 0 pruned
ALIVE = "vitprune_branch_alive"  # scalar buffer on attn.proj / mlp.fc2: 0 once every unit is pruned


def dynamicvit(model: nn.Module) -> dict[str, Any] | None:
    """DynamicViT config of `model` (None: no token pruning attached)."""
    return getattr(unwrap(model), DYNAMICVIT_ATTR, None)


def set_dynamicvit(model: nn.Module, cfg: dict[str, Any]) -> None:
    setattr(unwrap(model), DYNAMICVIT_ATTR, cfg)


def training_free(model: nn.Module) -> dict[str, Any] | None:
    """Training-free (CLS-attention top-k) config of `model` (None: not applied)."""
    return getattr(unwrap(model), TRAINING_FREE_ATTR, None)


def set_training_free(model: nn.Module, cfg: dict[str, Any]) -> None:
    setattr(unwrap(model), TRAINING_FREE_ATTR, cfg)


def merging(model: nn.Module) -> dict[str, Any] | None:
    """ToMe merging config of `model` ({"r": [merges per block]}; None: not applied)."""
    return getattr(unwrap(model), MERGING_ATTR, None)


def evit(model: nn.Module) -> dict[str, Any] | None:
    """EViT's config (keep rates, locations, fusion), or None."""
    return getattr(unwrap(model), EVIT_ATTR, None)


def set_evit(model: nn.Module, cfg: dict[str, Any]) -> None:
    setattr(unwrap(model), EVIT_ATTR, cfg)


def token_method(model: nn.Module) -> str | None:
    """Which token reduction the model has (DynamicViT, the training-free selection, ToMe, EViT), or None:
    one at a time, each patches the forward."""
    bare = unwrap(model)
    found = [name for name, attr in (("DynamicViT", DYNAMICVIT_ATTR), ("training-free", TRAINING_FREE_ATTR),
                                     ("ToMe merging", MERGING_ATTR), ("EViT", EVIT_ATTR))
             if getattr(bare, attr, None) is not None]
    return found[0] if found else None


def refuse_other_token_method(model: nn.Module, own: str) -> None:
    """A UserError when `model` already has a token reduction other than `own` (a `token_method` name)."""
    other = token_method(model)
    if other not in (None, own):
        raise UserError(f"this model already has {other} token reduction; apply {own} to an unpruned "
                        f"(or block-pruned only) model")


def block_spec(model: nn.Module) -> list[dict[str, int]] | None:
    """Per-block widths recorded when heads/channels were removed (None: nothing removed)."""
    return getattr(unwrap(model), BLOCK_SPEC_ATTR, None)


def set_block_spec(model: nn.Module, spec: list[dict[str, int]]) -> None:
    setattr(unwrap(model), BLOCK_SPEC_ATTR, spec)
