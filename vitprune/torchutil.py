"""Small torch/timm helpers every vitprune module shares (bottom layer: imports only errors).

* `unwrap(model)`: the bare model under DistributedDataParallel / DataParallel / accelerate
  wrappers (`.module`) and `torch.compile` (`._orig_mod`).
* `torch_load(path)`: a checkpoint file read with `weights_only=True` (no arbitrary
  unpickling of a downloaded file); anything else is one UserError naming the file.
* `logits(output)`: plain logits from a model output.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vitprune.errors import UserError

# Globals a weights-only load may rebuild besides tensors and plain containers: official
# DeiT / DynamicViT training files store their command line as an argparse.Namespace
# (a plain attribute bag, no code runs when it is rebuilt).
SAFE_GLOBALS = (argparse.Namespace,)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model: strips `.module` wrappers (DDP, DataParallel, accelerate) and the
    `torch.compile` wrapper (`_orig_mod`), in any nesting."""
    while True:
        if isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def torch_load(path: str | os.PathLike) -> Any:
    """`torch.load(path, map_location="cpu", weights_only=True)` with one clear UserError for a
    missing file, a file that is not a torch checkpoint, or one that needs full unpickling
    (never falls back to `weights_only=False`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path} (the file does not exist)")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - one line instead of an unpickler traceback
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UserError(
                f"cannot read checkpoint {path}: it pickles the Python object {found.group(1)}, and vitprune "
                "reads checkpoints with weights_only=True (no arbitrary code from a file). If you trust the "
                "file, re-save only its weights, e.g. torch.save(torch.load(PATH, weights_only=False)"
                "['model'], 'weights.pth'), and pass that file instead") from None
        raise UserError(f"cannot read checkpoint {path}: not a torch checkpoint of tensors and plain "
                        f"containers ({type(exc).__name__}); check the file (truncated download?)") from None


def logits(output: Any) -> torch.Tensor:
    """Plain logits from a model output (DeiT distilled models return (cls, dist) in training)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return output
