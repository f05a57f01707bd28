"""Allowed values of the notebooks' parameters, declared once by parameter name.

A parameter means the same in every notebook that declares it (`batch_size` is per process in
01-04, `base_rate` is DynamicViT's rho in 02 and 04), so one rule per name serves all of them.
A pruning method declares the rules of its own parameters (`Method.parameters`), which
`methods.registry` adds here.
The pipeline checks every value against its rule before any kernel starts (`config.validate`,
with the parameter named and the fix); the modules that use a value check it again inside the
kernel, and those modules take their lists of choices from `CHOICES` here, so a choice is
written once. Types are not here: the notebook's parameters cell declares them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from vitprune.errors import UserError

CHOICES: dict[str, tuple[str, ...]] = {
    "mixed_precision": ("no", "bf16", "fp16", "auto"),  # auto: bf16 where native, else no (launch)
    "bench_precision": ("fp32", "bf16"),  # both models of a latency comparison at this one precision
    "schedule": ("geometric", "linear", "explicit"),  # DynamicViT keep schedule (token_schedule)
    "backbone_decisions": ("gumbel", "topk"),  # how DynamicViT masks tokens while the backbone trains
    "importance": ("magnitude", "taylor"),  # block pruning's unit importance
    "scope": ("layer", "global"),  # block pruning ranks units per layer or across layers
    "augment": ("crop_flip", "timm", "none"),  # training augmentation (data_torch)
    "source": ("auto", "idx", "hub", "imagefolder", "hf_imagenet"),  # notebook 00's data source
    "order": ("both", "token_then_block", "block_then_token"),  # notebook 04's combination orders
}


@dataclass(frozen=True)
class Rule:
    """A test of one value and the words that say what it must be."""

    accepts: Callable[[Any], bool]
    text: str


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def at_least(low: float) -> Rule:
    return Rule(lambda v: _number(v) and v >= low, f">= {low:g}")


def above(low: float) -> Rule:
    return Rule(lambda v: _number(v) and v > low, f"> {low:g}")


def interval(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Rule:
    def accepts(v: Any) -> bool:
        return _number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return Rule(accepts, f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}")


def off_or_at_least(low: float) -> Rule:
    """0 switches the feature off; otherwise a ratio of at least `low` (e.g. a MAC ratio >= 1)."""
    return Rule(lambda v: _number(v) and (v == 0 or v >= low), f"0 (off) or >= {low:g}")


def each(rule: Rule) -> Rule:
    return Rule(lambda v: isinstance(v, (list, tuple)) and all(rule.accepts(x) for x in v), f"a list of values {rule.text}")


def positive_int_list() -> Rule:
    def accepts(v: Any) -> bool:
        try:
            return all(int(x) >= 1 for x in str(v).split(","))
        except ValueError:
            return False
    return Rule(accepts, "comma-separated ints >= 1, like \"1,16\"")


FRACTION = interval(0, 1)
RATE = interval(0, 1, low_open=True)  # a keep rate: 0 would keep nothing
DECAY = interval(0, 1, high_open=True)

RULES: dict[str, Rule] = {
    # counts of things (epochs 0: evaluate given weights, e.g. 02 with token_checkpoint)
    **{name: at_least(1) for name in (
        "batch_size", "eval_batch_size", "img_size", "threads",
        "bench_repeats", "edge_repeats", "grad_accum_steps", "update_every", "num_proc",
        "max_grid_classes")},
    **{name: at_least(0) for name in (
        "epochs", "lr_batch", "bench_batch_size", "train_per_class", "eval_per_class", "eval_every", "num_workers", "seed", "min_heads",
        "min_mlp", "crop_pad", "num_viz", "samples_per_class", "max_kept_images")},
    "num_processes": Rule(lambda v: v == "auto" or (_number(v) and v >= 1), ">= 1 or auto (one per GPU, else per core)"),
    # rates, weights and schedule fractions
    "lr": above(0), "distill_temperature": above(0),
    **{name: at_least(0) for name in (
        "weight_decay", "warmup_epochs", "frozen_epochs", "mixup_alpha", "cutmix_alpha", "backbone_lr_scale",
        "clf_weight", "ratio_weight", "distill_weight", "token_distill_weight")},
    **{name: FRACTION for name in (
        "min_lr_ratio", "re_prob", "prune_start", "prune_end", "train_fraction",
        "eval_fraction", "handoff")},
    "label_smoothing": DECAY, "model_ema_decay": DECAY, "importance_ema": DECAY,
    "edge_mac_ratio": off_or_at_least(1),
    # lists
    "crop_pcts": each(RATE), "locations": each(at_least(0)), "seeds": each(at_least(0)),
    "comparator_rates": each(RATE),
    "plugins": Rule(lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v),
                    "a list of module names or .py files, each ending in METHOD = Method(...)"),
    "edge_batch_sizes": positive_int_list(),
    **{name: Rule(lambda v, allowed=allowed: v in allowed, "one of " + ", ".join(allowed))
       for name, allowed in CHOICES.items()},
}


def declare(rules: dict[str, Rule]) -> None:
    """Add a method's parameter rules (`methods.registry.register` calls it); a name has one rule
    (the same words: a plugin loaded again declares its rules again)."""
    clash = [name for name, rule in rules.items() if RULES.get(name, rule).text != rule.text]
    if clash:
        raise UserError(f"parameters {clash} have a rule already; a parameter means one thing in every notebook")
    RULES.update(rules)


PATHS = ("checkpoint", "token_checkpoint", "launch_config", "imagefolder_dir")
"""Parameters naming a file or folder that must exist when set (relative: to the repository, the
kernels' working folder); empty means unused. (`idx_dir` is not here: it has a default that only
matters for the IDX source, and notebook 00 says how to install it.)"""


def check(name: str, value: Any, source: str) -> None:
    """Raise one UserError line when `value` breaks the rule of parameter `name` (no rule: any)."""
    rule = RULES.get(name)
    if rule is not None and not rule.accepts(value):
        where = "the -p value" if source.startswith("-p") else source
        raise UserError(f"{source}: parameter {name!r} must be {rule.text}, got {value!r}; fix {where}")
