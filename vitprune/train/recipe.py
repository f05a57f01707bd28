"""What a training run is trained with, as data: `TrainConfig` (the recipe: schedule,
regularisation, timm's pieces and scale, one flat typed record as nanoGPT's config) and `Hooks`
(what a method plugs into the loop), plus the parts of the recipe that are plain functions of
it: the losses, the learning-rate schedule, AdamW's parameter groups, Mixup and per-epoch seeding.
`vitprune.train.engine` runs the loop."""

from __future__ import annotations

import math
import random
import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vitprune.errors import UserError
from vitprune.torchutil import logits as logits_of

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "nn.Module | None"],
                  "tuple[torch.Tensor, torch.Tensor, dict[str, float]]"]


class StepHook(Protocol):
    """`on_step(step, total_steps, model)`: runs after backward, before each optimizer step (a
    pruner that updates masks from the gradients, a hook that drops the frozen backbone's
    gradients). A hook object's plain attributes (e.g. GradualPruner.log) come back from the
    workers of a multi-process run."""

    leaves_unused_parameters: bool  # True: some steps leave parameters without gradients (DDP must expect it)

    def __call__(self, step: int, total_steps: int, model: nn.Module) -> None: ...


class StepHooks:
    """Several `StepHook`s called in order before each optimizer step (a width method's pruner, then
    a token method's phase switch); each part's plain attributes come back from the workers."""

    def __init__(self, parts: Sequence[Callable[[int, int, nn.Module], None]]):
        self.parts = list(parts)
        self.leaves_unused_parameters = any(getattr(h, "leaves_unused_parameters", False) for h in self.parts)

    def __call__(self, step: int, total_steps: int, model: nn.Module) -> None:
        for hook in self.parts:
            hook(step, total_steps, model)


@dataclass(frozen=True)
class Hooks:
    """What a method plugs into `engine.train`; each is optional (tests/test_engine.py exercises each).

    loss_fn(model, images, targets, teacher) -> (loss, logits, logs) replaces CE + distillation
    (targets are (N, classes) soft targets when Mixup / CutMix is on); on_step: a `StepHook`;
    param_groups: [{"params", "lr_scale"}] instead of one group of all trainable parameters;
    batch_transform(images) augments each training batch on the device."""

    loss_fn: LossFn | None = None
    on_step: StepHook | Callable[[int, int, nn.Module], None] | None = None
    param_groups: Sequence[dict] | None = None
    batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def leaves_unused_parameters(self) -> bool:
        return bool(getattr(self.on_step, "leaves_unused_parameters", False))


@dataclass(frozen=True)
class TrainConfig:
    """One training run's settings. Units: epochs over the training set, `batch_size` images per
    process (the global batch is batch_size x processes x grad_accum_steps), `lr` the peak AdamW
    rate after a linear warm-up of `warmup_epochs` (cosine decay to lr x min_lr_ratio).

    `lr_batch` > 0: `lr` is the rate for a global batch of that many images, scaled linearly to the
    run's (Goyal et al. 2017; DeiT / DynamicViT: 512), so 1 and 8 GPUs train at the same rate per image.
    timm's recipe (as DeiT / DynamicViT train): `mixup_alpha` / `cutmix_alpha` > 0 turn on
    `timm.data.Mixup` (its label smoothing replaces CE's; the last partial batch is dropped);
    `model_ema_decay` > 0 keeps `timm.utils.ModelEmaV3` and ends with its weights; `compile_model`
    runs `nn.Module.compile()`. `distill_weight` / `distill_temperature` shape the default loss
    (a method's own `Hooks.loss_fn` replaces it). Scale: `num_processes` workers per machine
    (`auto`: one per GPU, else per core) or accelerate's config file `launch_config`;
    `mixed_precision` autocasts the forward passes."""

    epochs: int
    batch_size: int
    lr: float
    warmup_epochs: float = 0.0
    lr_batch: int = 0
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    grad_clip: float | None = None
    seed: int = 0
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    grad_accum_steps: int = 1
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    model_ema_decay: float = 0.0
    compile_model: bool = False
    eval_batch_size: int | None = None  # None: batch_size
    eval_every: int = 1  # epochs between evaluations of the eval set (the last epoch always)
    num_workers: int = 0  # DataLoader workers per process
    trace_every: int = 10  # optimizer steps between points of the history's loss trace
    log_dir: str = ""  # TensorBoard event files of the run (accelerate's tracker, main process); empty: none
    progress: bool = True  # tqdm bars
    resume: bool = True  # continue from <checkpoint_dir>/last.pt when it matches this run
    num_processes: int | str = 1
    mixed_precision: str = "no"
    launch_config: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> "TrainConfig":
        """The fields `params` names (a notebook's parameters, e.g. its `globals()`), then `overrides`."""
        values = {f.name: params[f.name] for f in fields(cls) if f.name in params}
        return cls(**{**values, **overrides})

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def scale(self) -> dict[str, Any]:
        """Where it runs, as `engine.evaluate` and `launch.plan` take it."""
        return {"num_processes": self.num_processes, "mixed_precision": self.mixed_precision,
                "launch_config": self.launch_config}

    @property
    def recipe(self) -> dict[str, Any]:
        """timm's recipe pieces, as a run's metrics.json records them (`recipe`)."""
        return {k: getattr(self, k) for k in ("grad_accum_steps", "lr_batch", "mixup_alpha", "cutmix_alpha",
                                              "model_ema_decay", "compile_model")}


# --------------------------------------------------------------------------- losses


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Soft-target KL(teacher || student) at temperature T, scaled by T^2 so its gradient
    size does not depend on T (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network")."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def classification_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy on integer labels (label-smoothed) or on soft targets (N, classes) as
    Mixup/CutMix make them (timm's SoftTargetCrossEntropy; the smoothing is then inside the
    targets)."""
    if targets.dim() == 2:
        from timm.loss import SoftTargetCrossEntropy

        return SoftTargetCrossEntropy()(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def hard_labels(targets: torch.Tensor) -> torch.Tensor:
    """Integer labels; soft (mixed) targets count as their largest component."""
    return targets.argmax(-1) if targets.dim() == 2 else targets


def default_loss_fn(label_smoothing: float = 0.1, distill_weight: float = 0.0,
                    distill_temperature: float = 1.0) -> LossFn:
    """CE (label-smoothed, or soft targets) mixed with distillation: (1 - w) * CE + w * KL_T
    when a teacher is given."""
    def loss_fn(model, images, targets, teacher):
        logits = logits_of(model(images))
        ce = classification_loss(logits, targets, label_smoothing)
        logs = {"ce": float(ce.detach())}
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                teacher_logits = logits_of(teacher(images))
            kd = distillation_loss(logits, teacher_logits, distill_temperature)
            logs["distill"] = float(kd.detach())
            return (1.0 - distill_weight) * ce + distill_weight * kd, logits, logs
        return ce, logits, logs
    return loss_fn


# --------------------------------------------------------------------------- schedule, seeds, Mixup


def seed_epoch(seed: int, epoch: int, process_index: int = 0) -> None:
    """Seed torch, numpy and random for one epoch of one process: augmentation, dropout, Gumbel
    noise, timm's Mixup / CutMix (numpy) and the loader workers' seeds (drawn from torch) then
    depend on (seed, epoch, process) only, so a run resumed at an epoch retraces the uninterrupted one."""
    value = seed * 100_003 + epoch * 1009 + process_index
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def handoff_step(fraction: float, total_steps: int) -> int:
    """The optimizer step after which the hand-off at `fraction` of a `total_steps` run is taken."""
    return min(total_steps, max(1, round(fraction * total_steps)))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at `step` (0-based): linear warm-up to 1, then cosine to `min_lr_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_mixup(model: nn.Module, config: TrainConfig, class_names: Sequence[str] | None):
    """timm's Mixup / CutMix for `config`, or None when both are off."""
    if config.mixup_alpha < 0 or config.cutmix_alpha < 0:
        raise UserError(f"mixup_alpha and cutmix_alpha must be >= 0, got {config.mixup_alpha}, {config.cutmix_alpha}")
    if not (config.mixup_alpha > 0 or config.cutmix_alpha > 0) or config.mixup_prob <= 0:
        return None
    from timm.data import Mixup

    num_classes = getattr(model, "num_classes", None) or (len(class_names) if class_names else None)
    if not num_classes:
        raise UserError("Mixup/CutMix needs the number of classes: the model has no num_classes; pass class_names")
    return Mixup(mixup_alpha=config.mixup_alpha, cutmix_alpha=config.cutmix_alpha, prob=config.mixup_prob,
                 switch_prob=config.mixup_switch_prob, mode="batch", label_smoothing=config.label_smoothing,
                 num_classes=int(num_classes))


# --------------------------------------------------------------------------- optimizer groups


def _no_decay(name: str, param: nn.Parameter, skip: set[str]) -> bool:
    # biases, norm scales, position embeddings and the CLS token are not decayed (as in DeiT/timm)
    return param.ndim <= 1 or name in skip or name.endswith(".bias")


def build_param_groups(model: nn.Module, weight_decay: float,
                       param_groups: Sequence[dict] | None = None) -> list[dict]:
    """AdamW groups: each requested group (default: all trainable params, lr_scale 1) split
    into weight-decayed and not-decayed parameters."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    names = {id(p): n for n, p in model.named_parameters()}
    groups = param_groups if param_groups is not None else [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    out, seen = [], set()
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        dup = [names.get(id(p), "?") for p in params if id(p) in seen]
        if dup:
            raise UserError(f"param_groups list some parameters twice: {dup[:5]}")
        seen.update(id(p) for p in params)
        scale = float(g.get("lr_scale", 1.0))
        decay = [p for p in params if not _no_decay(names.get(id(p), ""), p, skip)]
        plain = [p for p in params if _no_decay(names.get(id(p), ""), p, skip)]
        for ps, wd in ((decay, weight_decay), (plain, 0.0)):
            if ps:
                out.append({"params": ps, "weight_decay": wd, "lr_scale": scale})
    if not out:
        raise UserError("no trainable parameters: every parameter has requires_grad=False")
    return out
