"""What a pruning method declares about itself, once (`Method`), the command-line flags it
adds (`Flag`) and how it fine-tunes (`Training`, which returns a `FineTune` for each run). Each
method module ends with its `METHOD = Method(...)`; `registry` collects them.

Code outside the method's own module never names a method: checkpoints (`models`), the
`measure` / `bench` / `export` flags, the notebooks' parameter rules, metrics, tables and
figures loop over `registry.METHODS` and call these fields.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from vitprune.errors import UserError
from vitprune.param_rules import Rule
from vitprune.torchutil import unwrap

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
class FineTune:
    """What one method plugs into one fine-tune; `vitprune.train.finetune` merges the methods'
    into the loop's hooks. A method that plugs nothing in is fine-tuned with the recipe's loss
    (label-smoothed cross-entropy plus KL distillation from the teacher at `distill_weight`).

    - `loss_fn(model, images, targets, teacher) -> (loss, logits, logs)`: the method's objective
      (at most one method of a fine-tune has one);
    - `param_groups`: [{"params", "lr_scale"}] (at most one method has them);
    - `on_step(step, total_steps, model)`: called before every optimizer step (a pruner that reads
      the gradients, a phase switch); `leaves_unused_parameters` on it tells DDP to expect
      parameters without gradients;
    - `teacher`: what `loss_fn` reads of the teacher: "logits", "tokens" (and logits) or "none";
    - `summary`: one line for the notebook, e.g. the phases of the fine-tune.
    """

    loss_fn: Callable | None = None
    param_groups: list[dict] | None = None
    on_step: Callable[[int, int, nn.Module], None] | None = None
    teacher: str = "logits"
    summary: str = ""


@dataclass(frozen=True)
class Training:
    """How a method fine-tunes, declared once (`Method.training`).

    - `settings`: the notebook parameters the fine-tune reads (names as in a parameters cell:
      loss weights, phases, learning-rate scales); one a notebook does not declare takes the
      default of `plug`'s keyword;
    - `plug(model, epochs, fresh, **settings) -> FineTune`: the fine-tune's pieces for `model`,
      which has the method applied; `epochs` of the run, `fresh` True when the method's own
      parameters were just created (nothing learned yet) rather than continued from a checkpoint;
    - `init(model, **settings)`: what happens once after `apply` on a fresh model (e.g. DynamicViT's
      keep prior, official weights), reading the settings it names in `init_settings`;
    - `plain`: its fine-tune is the recipe's alone (no loss, parameter groups or phases of its
      own), so with nothing pruned it is the same plain fine-tune as every other plain method's:
      they share one control run (`PLAIN_CONTROL`) instead of one each.
    """

    settings: tuple[str, ...]
    plug: Callable[..., FineTune]
    init: Callable[..., None] | None = None
    init_settings: tuple[str, ...] = ()
    plain: bool = False


FIXED_TOKENS = ("cls_token", "pos_embed", "reg_token", "dist_token")
"""Parameters the study's fine-tunes keep fixed (DynamicViT's official `get_param_groups`)."""


def backbone_parameters(model: nn.Module, skip_prefix: str | None = None) -> list[nn.Parameter]:
    """The trainable parameters a fine-tune updates at `lr * backbone_lr_scale`: all but
    FIXED_TOKENS and, with `skip_prefix`, a method's own modules (DynamicViT's predictors)."""
    return [p for name, p in unwrap(model).named_parameters()
            if p.requires_grad and name not in FIXED_TOKENS and not (skip_prefix and name.startswith(skip_prefix))]


def plain_fine_tune(model: nn.Module, backbone_lr_scale: float, summary: str) -> FineTune:
    """A `Training.plain` method's fine-tune: the recipe's loss (cross-entropy and KL distillation
    from the teacher's logits), the model at `lr * backbone_lr_scale` as DynamicViT's backbone
    trains, cls_token and pos_embed fixed: notebook 02's recipe without DynamicViT's own parts."""
    if backbone_lr_scale <= 0:
        raise UserError(f"backbone_lr_scale must be > 0 for a fine-tune with nothing else to train, "
                        f"got {backbone_lr_scale}")
    return FineTune(teacher="logits", summary=summary,
                    param_groups=[{"params": backbone_parameters(model), "lr_scale": float(backbone_lr_scale)}])


PLAIN_CONTROL = "plain_control"
"""The named point (sweep.yaml / study.yaml `points`) of the control the plain methods share, and
the `shared_control` their metrics rows record."""


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
    - `parameters`: rules for the notebook parameters the method adds (`param_rules.check`);
    - `from_params(params)`: `apply`'s keywords from a notebook's parameters (`base_rate`, the
      keep schedule, `target_macs` for a method matched to another row's MACs), as `from_flags`
      for the command line;
    - `row_label(params)`: the Table 1 label of a row of this method at those parameters;
    - `training`: how it fine-tunes (None: it is only evaluated as applied);
    - `training_free`: a method that trains is also a result evaluated as applied, nothing trained
      (its paper does so: ToMe); see `result_without_training`.
    """

    name: str  # one name everywhere: Table 1's `method`, metrics, figures, --method
    label: str  # how figures and tables name it
    marker: str  # matplotlib marker of its points
    kind: str  # TOKEN or WIDTH: at most one token method at a time; width methods are applied first
    apply: Callable[..., nn.Module]
    state: Callable[[nn.Module], dict[str, Any]]
    restore: Callable[[nn.Module, dict[str, Any]], nn.Module]
    describe: Callable[[nn.Module], dict[str, Any]]
    tokens_per_block: Callable[[nn.Module], list[int]] | None = None
    kept_token_masks: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]] | None = None
    flags: tuple[Flag, ...] = ()
    from_flags: Callable[[dict[str, Any]], dict[str, Any] | None] = lambda values: None
    parameters: dict[str, Rule] = field(default_factory=dict)
    from_params: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
    row_label: Callable[[Mapping[str, Any]], str] | None = None
    training: Training | None = None
    training_free: bool = False

    @property
    def trains(self) -> bool:
        """Whether it can be fine-tuned (notebook 02's `method`); False: only evaluated as applied."""
        return self.training is not None

    @property
    def result_without_training(self) -> bool:
        """Whether evaluating it as applied is a result of its own (it does not train, or it declares
        `training_free`): notebook 04 lists such methods as comparators."""
        return self.training is None or self.training_free

    @property
    def shared_control(self) -> str | None:
        """The named point of the control run it shares with other methods (`PLAIN_CONTROL` for a
        plain fine-tune), else None: its own, `control`."""
        return PLAIN_CONTROL if self.training is not None and self.training.plain else None

    @property
    def control_label(self) -> str:
        """The row label of its control run."""
        return f"{'plain fine-tune' if self.shared_control else self.label} control (nothing pruned)"

    def options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`apply`'s keywords at a notebook's parameters (one UserError line if it takes none)."""
        if self.from_params is None:
            raise UserError(f"method {self.name!r} declares no from_params: a notebook cannot apply it")
        return self.from_params(params)

    def label_at(self, params: Mapping[str, Any]) -> str:
        """The row label at a notebook's parameters (its `label` and rate when it declares none)."""
        if self.row_label is not None:
            return self.row_label(params)
        return f"{self.label} ρ={params['base_rate']:g}" if params.get("base_rate") is not None else self.label

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
