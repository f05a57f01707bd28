"""What a pruning method declares about itself, once (`Method`), and the command-line flags it
adds (`Flag`). Each method module ends with its `METHOD = Method(...)`; `registry` collects them.

Code outside the method's own module never names a method: checkpoints (`models`), the
`measure` / `bench` / `export` flags, the notebooks' parameter rules, metrics, tables and
figures loop over `registry.METHODS` and call these fields.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from vitprune.errors import UserError
from vitprune.param_rules import Rule

TOKEN, WIDTH = "token", "width"  # a token method changes which tokens blocks see; a width method removes units


@dataclass(frozen=True)
class Flag:
    """One flag of `python -m vitprune measure|bench|export` (argparse's `add_argument` keywords).

    Two methods may declare the same flag (DynamicViT and the training-free comparator share
    the keep schedule); the command line adds it once and gives its value to whichever method
    the flags select."""

    flag: str  # e.g. "--base-rate"
    options: dict[str, Any] = field(default_factory=dict)  # argparse keywords: type, choices, action, help

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Method:
    """A pruning method over timm's VisionTransformer.

    - `apply(model, **options)`: patch the model in place and return it;
    - `state(model)`: what a checkpoint stores to rebuild it, as {key: plain value}
      (every key present, value None when the method is not applied);
    - `restore(model, saved)`: re-apply the method to a fresh base model from a checkpoint's
      dict (before the weights load), a no-op when its keys are absent or None;
    - `describe(model)`: its settings and counts, as metrics.json records them;
    - token methods also `tokens_per_block(model)` (tokens entering each block, CLS
      included) and `kept_token_masks(model, images)` (eval logits and, per stage, a bool
      mask [B, N] over the patch grid of the patches whose token is still there);
    - `flags` and `from_flags(values)`: the command line's options (values: {dest: value} of
      this method's flags as given, None when absent) -> `apply`'s keywords, or None when the
      method is not asked for;
    - `parameters`: rules for the notebook parameters the method adds (`param_rules.check`).
    """

    name: str  # one name everywhere: Table 1's `method`, metrics, figures, --method
    label: str  # how figures and tables name it
    marker: str  # matplotlib marker of its points
    kind: str  # TOKEN or WIDTH: at most one token method at a time; width methods are applied first
    trains: bool  # False: evaluated as applied (the same at every seed)
    apply: Callable[..., nn.Module]
    state: Callable[[nn.Module], dict[str, Any]]
    restore: Callable[[nn.Module, dict[str, Any]], nn.Module]
    describe: Callable[[nn.Module], dict[str, Any]]
    tokens_per_block: Callable[[nn.Module], list[int]] | None = None
    kept_token_masks: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]] | None = None
    flags: tuple[Flag, ...] = ()
    from_flags: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda values: None
    parameters: dict[str, Rule] = field(default_factory=dict)

    def attached(self, model: nn.Module) -> bool:
        """True when the method is applied to `model`."""
        return any(v is not None and v is not False for v in self.state(model).values())


def state_entry(key: str, read: Callable[[nn.Module], Any]) -> Callable[[nn.Module], dict[str, Any]]:
    """A `Method.state` for a method whose whole state is one JSON-able value (a deep copy)."""
    def state(model: nn.Module) -> dict[str, Any]:
        return {key: copy.deepcopy(read(model))}
    return state


def restore_entry(key: str, apply: Callable[..., nn.Module], *older_keys: str
                  ) -> Callable[[nn.Module, dict[str, Any]], nn.Module]:
    """A `Method.restore` calling `apply(model, **saved[key])` when the checkpoint holds it (or,
    in a file written before the method had its one name, one of `older_keys`)."""
    def restore(model: nn.Module, saved: dict[str, Any]) -> nn.Module:
        value = next((saved[k] for k in (key, *older_keys) if saved.get(k) is not None), None)
        return model if value is None else (apply(model, **value) or model)
    return restore


def comma_list(text: str | None, flag: str, kind: type, example: str) -> list | None:
    """A flag's comma-separated value as numbers of `kind` (None when the flag is absent)."""
    if text is None:
        return None
    try:
        return [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated {example}; got {text!r}") from exc
