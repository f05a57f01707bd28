"""DynamicViT checkpoints in the official layout (github.com/raoyongming/DynamicViT): timm DeiT
keys plus `score_predictor.<i>.*`, stored as `{"model": state_dict, ...}`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitprune.errors import UserError
from vitprune.methods import dynamicvit
from vitprune.methods.dynamicvit import PREDICTOR_ATTR
from vitprune.torchutil import torch_load, unwrap


def official_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The model weights of an official DynamicViT file: `{"model": ...}`, `{"state_dict": ...}`
    or a bare state dict; a DDP `module.` prefix is removed."""
    state = obj
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("not a DynamicViT checkpoint: expected a state dict, or one under 'model'")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_official_checkpoint(model: nn.Module, path_or_state: Any, strict: bool = True) -> nn.Module:
    """Load weights in the official DynamicViT layout (timm DeiT keys + `score_predictor.<i>.*`)
    into a token-pruned model. With strict=False, missing predictor keys are allowed (start
    from a plain DeiT checkpoint); everything else must match."""
    bare = unwrap(model)
    cfg = dynamicvit.config(bare)
    obj = torch_load(path_or_state) if isinstance(path_or_state, (str, os.PathLike)) else path_or_state
    state = official_state_dict(obj)
    stages = {int(k.split(".")[1]) for k in state if k.startswith(PREDICTOR_ATTR + ".")}
    if stages and len(stages) != len(cfg["locations"]):
        raise UserError(f"checkpoint has {len(stages)} score predictors but the model prunes at "
                        f"{len(cfg['locations'])} locations {cfg['locations']}; attach with matching locations")
    own = bare.state_dict()
    missing = [k for k in own if k not in state and (strict or not k.startswith(PREDICTOR_ATTR + "."))]
    unexpected = [k for k in state if k not in own]
    shaped = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
            if keys:
                more = f" (+{len(keys) - 8} more)" if len(keys) > 8 else ""
                parts.append(f"{label}: {', '.join(keys[:8])}{more}")
        raise UserError("checkpoint does not fit the model -- " + "; ".join(parts) +
                        "; build the same architecture (embed dim, depth, img size) before loading")
    bare.load_state_dict(state, strict=False)
    return model


def save_official_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write `{"model": state_dict, **extra}` (the official layout) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": unwrap(model).state_dict(), **extra}, tmp)
    os.replace(tmp, path)
    return path
