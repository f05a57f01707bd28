"""One fine-tune path for every pruning method: `prepare` applies a registered method at a
notebook's parameters and initialises what it adds; `finetune` trains the model with what each
method declares of its training (`Method.training`: loss, parameter groups, step hooks, the
teacher it reads) on `engine.train`. Notebooks 02, 03 and 04 call these two, so a method added to
the registry is fine-tuned the way the study fine-tunes its own.

`params` is a notebook's parameters (its `globals()`) or any mapping: each method reads only the
settings it names (`Training.settings`), and keyword overrides replace single values (notebook 04
gives the block widths it computed; `match_macs` the MACs of another method's row).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn
from torch.utils.data import Dataset

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import registry
from vitprune.methods.method import FineTune, Method
from vitprune.train import engine
from vitprune.train.recipe import Hooks, StepHooks, TrainConfig


@dataclass
class FineTuned:
    """What `finetune` did: the per-epoch `history` (engine.train's), the `budget` (optimizer steps,
    images seen, wall seconds and the hand-off's share; None when nothing trained) and what each
    method plugged in, by name (block pruning's step hook is its `GradualPruner`, with its log)."""

    history: list[dict[str, Any]]
    budget: dict[str, Any] | None
    plugged: dict[str, FineTune] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)  # what each method read, by name

    def __str__(self) -> str:
        if not self.budget:
            return "not fine-tuned (0 epochs)"
        return (f"fine-tuned in {self.budget['wall_s']:.1f} s: {self.budget['steps']} optimizer steps, "
                f"{self.budget['images']:,} images seen")


def budget(history: list[dict[str, Any]] | None, wall_s: float | None) -> dict[str, Any] | None:
    """A fine-tune's budget from engine.train's history: optimizer steps, images seen (steps x
    global batch) and wall time in seconds; None for a model that was not trained. A run with a
    hand-off (engine.train's `handoff`) also gets `handoff`: the steps and images spent
    up to it (what a combination that continues from there has used of this budget)."""
    if not history:
        return None
    steps = sum(int(h["steps_per_epoch"]) for h in history)
    batch = int(history[0].get("global_batch", 0))
    out = {"steps": steps, "images": steps * batch, "wall_s": float(wall_s) if wall_s is not None else None}
    k = history[0].get("handoff_at_step")
    if k:
        out["handoff"] = {"steps": int(k), "images": int(k) * batch}
    return out


def _picked(values: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    return {k: values[k] for k in names if k in values}


def trainable(name: str) -> Method:
    """The registered method `name`, which must fine-tune (one UserError line otherwise)."""
    method = registry.get(name)
    if not method.trains:
        able = ", ".join(m.name for m in registry.METHODS.values() if m.trains)
        raise UserError(f"method {name!r} is evaluated as applied (nothing in it trains); methods that fine-tune: "
                        f"{able}")
    return method


def prepare(model: nn.Module, method: str, params: Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Apply `method` to `model` in place at `params` (`Method.from_params`: its rate, schedule, ...)
    and initialise what it adds (`Training.init`: e.g. DynamicViT's keep prior or released
    weights); returns the model."""
    values = {**params, **overrides}
    found = registry.get(method)
    options = found.options(values)
    if values.get("target_macs") is not None and "target_macs" not in options:
        raise UserError(f"method {method!r} cannot be matched to another method's MACs (match_macs_of): "
                        "its base_rate sets its MACs")
    model = registry.apply(model, method, **options)
    if found.training is not None and found.training.init is not None:
        found.training.init(model, **_picked(values, found.training.init_settings))
    return model


def match_macs(baseline: nn.Module, of: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """What a run matched to another method's MACs gives `prepare` (and its row records): the MACs
    per image of method `of` applied to a copy of `baseline` at `params` (`target_macs`), that
    row's label (`matched_label`, e.g. "DynamicViT ρ=0.7") and `matched_method`; {} when `of` is
    empty. EViT and ToMe take it, so a contest with DynamicViT is at equal MACs by construction."""
    if not of:
        return {}
    reference = prepare(copy.deepcopy(baseline), of, params)
    return {"target_macs": int(measure.count(reference)["macs"]), "matched_label": registry.get(of).label_at(params),
            "matched_method": of}


def _one(plugged: dict[str, FineTune], what: str) -> Any:
    owners = [name for name, p in plugged.items() if getattr(p, what) is not None]
    if len(owners) > 1:
        raise UserError(f"{' and '.join(owners)} both bring a {what}; fine-tune them one after the other")
    return getattr(plugged[owners[0]], what) if owners else None


def finetune(model: nn.Module, methods: str | Sequence[str], train_set: Dataset, config: TrainConfig, *,
             params: Mapping[str, Any] | None = None, teacher: nn.Module | None = None, fresh: bool = True,
             batch_transform=None, eval_set: Dataset | None = None,
             checkpoint_dir: str | os.PathLike | None = None,
             handoff: tuple[float, str | os.PathLike] | None = None, desc: str = "fine-tune",
             **overrides: Any) -> FineTuned:
    """Fine-tune `model` (the methods already applied, e.g. by `prepare`) in place with the recipe
    `config` and what each of `methods` (one name, or several: width methods' step hooks run first)
    declares, reading its settings from `params` and `overrides`. `teacher`: the unpruned model the
    loss distills from (passed on only when a method's loss, or the recipe's `distill_weight`,
    reads it). `fresh`: the methods' own parameters were just created, not continued from a
    checkpoint. `checkpoint_dir`, `handoff`, `eval_set`, `desc` go to `engine.train`. With
    `config.epochs` 0 nothing trains (evaluate the model as it is)."""
    names = [methods] if isinstance(methods, str) else list(methods)
    chosen = sorted((trainable(n) for n in names), key=lambda m: list(registry.METHODS).index(m.name))
    if config.epochs == 0:
        return FineTuned([], None)
    values = {**(params or {}), **overrides}
    settings = {m.name: _picked(values, m.training.settings) for m in chosen}
    plugged = {m.name: m.training.plug(model, config.epochs, fresh, **settings[m.name]) for m in chosen}
    for name, part in plugged.items():
        if part.summary:
            print(f"{name}: {part.summary}")
    steps = [p.on_step for p in plugged.values() if p.on_step is not None]
    hooks = Hooks(loss_fn=_one(plugged, "loss_fn"), param_groups=_one(plugged, "param_groups"),
                  on_step=steps[0] if len(steps) == 1 else StepHooks(steps) if steps else None,
                  batch_transform=batch_transform)
    reads_teacher = any(p.teacher != "none" for p in plugged.values()) and (
        hooks.loss_fn is not None or config.distill_weight > 0)
    started = time.perf_counter()
    history = engine.train(model, train_set, config, eval_set, hooks=hooks,
                           teacher=teacher if reads_teacher else None, checkpoint_dir=checkpoint_dir,
                           handoff=handoff, desc=desc)
    return FineTuned(history, budget(history, time.perf_counter() - started), plugged, settings)
