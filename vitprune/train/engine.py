"""Train / evaluate loops on Hugging Face `accelerate`: one CPU process, one GPU or many
run the same code.

`num_processes > 1` (or an accelerate config file, `launch_config`) makes `train` and
`evaluate` fork that many workers through `vitprune.train.launch` (accelerate's notebook launcher,
gloo on CPU, NCCL on GPUs) and copy the trained weights back into the caller's model; a
script started by `accelerate launch` / `torchrun` calls them with the default 1 and gets
the launcher's processes. `batch_size` is per process (the global batch is
`batch_size * num_processes * grad_accum_steps`). Training is AdamW with a per-step linear
warm-up then cosine decay, label-smoothed cross-entropy and an optional distillation term
from a teacher's soft targets, and optionally timm's recipe pieces: Mixup / CutMix (soft
targets), model EMA (`timm.utils.ModelEmaV3`), gradient accumulation (accelerate's),
`torch.compile` and bf16 / fp16 autocast. A checkpoint is written after every epoch
(`<checkpoint_dir>/last.pt`) and a new call resumes from it. Shuffling, augmentation (also in
loader workers) and Mixup are seeded per epoch (`seed_epoch`), so an interrupted-and-resumed
run retraces the uninterrupted one. Models come back on the device they came on, bare
(`handed_back`): the caller never holds a model on the training device or under autocast.
"""

from __future__ import annotations

import math
import os
import random
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitprune.train import launch
from vitprune.data.tensors import preload, random_crop_flip  # noqa: F401  (moved to the data side; engine.X still works)
from vitprune.errors import UserError
from vitprune.torchutil import logits as logits_of

CHECKPOINT_NAME = "last.pt"

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "nn.Module | None"],
                  "tuple[torch.Tensor, torch.Tensor, dict[str, float]]"]


# --------------------------------------------------------------------------- helpers


def make_accelerator(seed: int = 0, mixed_precision: str = "no", gradient_accumulation_steps: int = 1,
                     find_unused_parameters: bool = False, **kwargs: Any):
    """An `accelerate.Accelerator` whose prepared loaders shuffle reproducibly (seed + epoch),
    with autocast at `mixed_precision` (no | bf16 | fp16 | auto) and accelerate's gradient accumulation.
    `find_unused_parameters`: DDP (> 1 process) expects steps in which some parameters get no
    gradient (it then walks the autograd graph once per step, so it is off unless asked for)."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    mixed_precision = launch.plan(1, mixed_precision).mixed_precision  # validated, auto resolved (no | bf16 | fp16)
    if gradient_accumulation_steps < 1:
        raise UserError(f"grad_accum_steps must be >= 1, got {gradient_accumulation_steps}")
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", "no")) != mixed_precision:
        # accelerate keeps one precision per process; a later call with another one starts afresh
        AcceleratorState._reset_state()
    config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=int(seed))
    try:
        ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(find_unused_parameters))
        return Accelerator(dataloader_config=config, mixed_precision=mixed_precision,
                           gradient_accumulation_steps=int(gradient_accumulation_steps),
                           kwargs_handlers=[ddp], **kwargs)
    except ValueError as exc:  # e.g. fp16 without a GPU
        raise UserError(f"accelerate refused mixed_precision={mixed_precision!r}: {exc}") from exc


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


def seed_epoch(seed: int, epoch: int, process_index: int = 0) -> None:
    """Seed torch, numpy and random for one epoch of one process: augmentation, dropout, Gumbel
    noise, timm's Mixup / CutMix (numpy) and the loader workers' seeds (drawn from torch) then
    depend on (seed, epoch, process) only, so a run resumed at an epoch retraces the uninterrupted one."""
    value = seed * 100_003 + epoch * 1009 + process_index
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    random.seed(value)


def handoff_step(fraction: float, total_steps: int) -> int:
    """The optimizer step after which a `snapshot` at `fraction` of a `total_steps` run is taken."""
    return min(total_steps, max(1, round(fraction * total_steps)))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier at `step` (0-based): linear warm-up to 1, then cosine to `min_lr_ratio`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


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


# --------------------------------------------------------------------------- checkpoint/resume


def _fingerprint(epochs: int, batch_size: int, lr: float, num_train: int, world: int,
                 grad_accum_steps: int = 1, ema: bool = False) -> dict[str, Any]:
    out = {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
           "num_train": int(num_train), "num_processes": int(world)}
    if grad_accum_steps != 1:
        out["grad_accum_steps"] = int(grad_accum_steps)
    if ema:
        out["model_ema"] = True
    return out


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_train_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last per-epoch training checkpoint in `checkpoint_dir`, or None."""
    path = Path(checkpoint_dir) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{path} is unreadable ({exc}); delete it or pass resume=False") from exc


# --------------------------------------------------------------------------- train


def train(model: nn.Module, train_set: Dataset, eval_set: Dataset | None = None, *,
          epochs: int, batch_size: int, lr: float, lr_batch: int = 0, weight_decay: float = 0.05,
          warmup_epochs: float, label_smoothing: float = 0.1, seed: int = 0,
          teacher: nn.Module | None = None, distill_weight: float = 0.0,
          distill_temperature: float = 1.0, loss_fn: LossFn | None = None,
          on_step: Callable[[int, int, nn.Module], None] | None = None,
          param_groups: Sequence[dict] | None = None,
          checkpoint_dir: str | os.PathLike | None = None, resume: bool = True,
          batch_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
          min_lr_ratio: float = 0.0, grad_clip: float | None = None,
          eval_batch_size: int | None = None, eval_every: int = 1,
          num_workers: int = 0, class_names: Sequence[str] | None = None,
          trace_every: int = 10, accelerator=None, progress: bool = True,
          num_processes: int = 1, mixed_precision: str = "no", launch_config: str = "",
          grad_accum_steps: int = 1, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
          mixup_prob: float = 1.0, mixup_switch_prob: float = 0.5, model_ema_decay: float = 0.0,
          compile_model: bool = False, snapshot: tuple[float, str | os.PathLike] | None = None,
          desc: str = "train") -> list[dict[str, Any]]:
    """Train `model` in place; return the per-epoch history (train_loss, train_acc, lr,
    epoch_time_s, img_per_s, eval_top1/eval_top5 when `eval_set` is given, loss_fn logs,
    num_processes, mixed_precision, and `trace`: [global step, running mean loss of this
    process, lr] every `trace_every` optimizer steps).

    Hooks (this docstring is their contract; tests/test_engine.py exercises each): `loss_fn(model, images, targets, teacher) -> (loss, logits,
    logs)` replaces CE + distillation (targets are (N, classes) soft targets when Mixup/CutMix
    is on); `on_step(step, total_steps, model)` runs after backward, before each optimizer
    step (an `on_step.leaves_unused_parameters = True` attribute tells DDP that some steps leave
    parameters without gradients); `param_groups=[{"params", "lr_scale"}]`. `batch_transform(images)` augments each
    training batch on the device. A NaN/inf loss raises UserError naming the step.

    Scale: `num_processes` workers per machine (or accelerate's config file `launch_config`)
    train the same model with DDP; the weights come back into `model` and an `on_step`
    object's plain attributes (e.g. GradualPruner.log) into `on_step`. `mixed_precision`
    autocasts the forward passes (student and teacher) to bf16 / fp16.

    `lr_batch` > 0: `lr` is the rate for a global batch (batch_size x processes x grad_accum_steps) of
    that many images and is scaled linearly to the run's (DeiT / DynamicViT: 512), so 1 and 8 GPUs
    train with the same rate per image; 0: `lr` as given.

    Recipe (timm, as DeiT / DynamicViT train): `mixup_alpha` / `cutmix_alpha` > 0 turn on
    `timm.data.Mixup` (its label smoothing replaces CE's; even per-process batches, the last
    partial batch dropped); `grad_accum_steps` sums that many batches per optimizer step;
    `model_ema_decay` > 0 keeps `timm.utils.ModelEmaV3` of the weights (buffers copied) and
    leaves the EMA weights in `model` at the end; `compile_model` runs `nn.Module.compile()`.

    `snapshot=(fraction, path)` also saves the model's state dict (CPU tensors) to `path` once
    `handoff_step(fraction, total optimizer steps)` steps are done: a hand-off point (notebook 04
    continues the model as it was then with another pruning method, so that both stages together
    cost one fine-tune).
    """
    options = {k: v for k, v in locals().items()
               if k not in ("model", "train_set", "eval_set", "num_processes", "launch_config")}
    where = launch.plan(num_processes, mixed_precision, launch_config)
    if where.world_size == 1:
        with handed_back(model), handed_back(teacher):
            return _train(model, train_set, eval_set, **options)
    if accelerator is not None:
        raise UserError("pass either an accelerator or num_processes > 1 / launch_config, not both")
    out = launch.run(_train_worker, (model, train_set, eval_set, options), where)
    model.load_state_dict(out["model"])
    if out["on_step"]:
        vars(on_step).update(out["on_step"])
    model.eval()
    return out["history"]


# attributes `Accelerator.prepare` sets on the model object itself (accelerate 1.16 `prepare_model`):
# the autocast-wrapped `forward`, the forward it wrapped, and the "already prepared" flag
_ACCELERATE_ATTRS = ("forward", "_original_forward", "_is_accelerate_prepared")


@contextmanager
def handed_back(model: nn.Module | None):
    """Give `model` back as it came: on its device, with its class's own `forward` and its
    parameters' `requires_grad` (None: nothing to do).

    With one process `Accelerator.prepare` works on the caller's model object: it moves it to
    the accelerator's device and, under bf16 / fp16, replaces `model.forward` by an autocast
    wrapper that stays after training. A model timed or evaluated afterwards would then run in
    bf16 without saying so (a bf16 student against an fp32 teacher looked 1.5x faster than its
    MACs allow), and a second `prepare` would skip it as "already prepared". Training also
    freezes the teacher (a later copy of it would not train). On leaving (also on error), the
    instance attributes accelerate set are removed (any the caller had are restored), the
    `requires_grad` flags restored and the model moved back to its device."""
    if model is None:
        yield model
        return
    saved = {name: model.__dict__[name] for name in _ACCELERATE_ATTRS if name in model.__dict__}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    device = flags[0][0].device if flags else None
    try:
        yield model
    finally:
        for name in _ACCELERATE_ATTRS:
            model.__dict__.pop(name, None)
        model.__dict__.update(saved)
        for p, flag in flags:
            p.requires_grad_(flag)
        if device is not None:
            model.to(device)


def _plain(value: Any) -> bool:
    """Whether torch.load(weights_only=True) can bring `value` back (tensors, numbers, text,
    and lists / tuples / dicts of them)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_plain, value))
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in value.items())
    return False


def _train_worker(model, train_set, eval_set, options: dict[str, Any]) -> dict[str, Any]:
    """One launched process: train, then hand back the weights, history and hook state."""
    history = _train(model, train_set, eval_set, **options)
    hook = options.get("on_step")
    hook_state = None
    if hook is not None and not isinstance(hook, types.FunctionType) and hasattr(hook, "__dict__"):
        hook_state = {k: v for k, v in vars(hook).items() if _plain(v)}
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "history": history, "on_step": hook_state}


def _mixup(model: nn.Module, mixup_alpha: float, cutmix_alpha: float, prob: float, switch_prob: float,
           label_smoothing: float, class_names: Sequence[str] | None):
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise UserError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, {cutmix_alpha}")
    if not (mixup_alpha > 0 or cutmix_alpha > 0) or prob <= 0:
        return None
    from timm.data import Mixup

    num_classes = getattr(model, "num_classes", None) or (len(class_names) if class_names else None)
    if not num_classes:
        raise UserError("Mixup/CutMix needs the number of classes: the model has no num_classes; pass class_names")
    return Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                 mode="batch", label_smoothing=label_smoothing, num_classes=int(num_classes))


def _train(model: nn.Module, train_set: Dataset, eval_set: Dataset | None, *, epochs: int, batch_size: int,
           lr: float, lr_batch: int, weight_decay: float, warmup_epochs: float, label_smoothing: float, seed: int,
           teacher, distill_weight: float, distill_temperature: float, loss_fn, on_step, param_groups,
           checkpoint_dir, resume: bool, batch_transform, min_lr_ratio: float, grad_clip, eval_batch_size,
           eval_every: int, num_workers: int, class_names, trace_every: int, accelerator, progress: bool,
           mixed_precision: str, grad_accum_steps: int, mixup_alpha: float, cutmix_alpha: float,
           mixup_prob: float, mixup_switch_prob: float, model_ema_decay: float, compile_model: bool,
           snapshot, desc: str) -> list[dict[str, Any]]:
    """The training loop of this process (see `train`)."""
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if len(train_set) == 0:
        raise UserError("the training set is empty")
    if not 0.0 <= model_ema_decay < 1.0:
        raise UserError(f"model_ema_decay must be in [0, 1), got {model_ema_decay}")
    if snapshot and not 0.0 < snapshot[0] <= 1.0:
        raise UserError(f"the hand-off fraction must be in (0, 1], got {snapshot[0]}")
    # an on_step hook that leaves parameters without gradients says so (token_pruning.frozen_backbone_hook)
    accelerator = accelerator or make_accelerator(seed, mixed_precision, grad_accum_steps,
                                                  getattr(on_step, "leaves_unused_parameters", False))
    from accelerate.utils import set_seed

    set_seed(seed)
    mixup = _mixup(model, mixup_alpha, cutmix_alpha, mixup_prob, mixup_switch_prob, label_smoothing, class_names)
    world = accelerator.num_processes
    if mixup is not None:
        if batch_size % 2:
            raise UserError(f"Mixup/CutMix mixes pairs within a batch: batch_size must be even, got {batch_size}")
        if len(train_set) < batch_size * world:
            raise UserError(f"Mixup/CutMix drops partial batches: {len(train_set)} training images are fewer than "
                            f"one batch of {batch_size} x {world} processes")
    if world > 1 and accelerator.device.type == "cuda" and any(
            isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # batch statistics over the global batch, as one process has them (same state_dict keys);
        # torch's SyncBatchNorm is GPU-only, so CPU workers keep per-process statistics
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if compile_model:
        model.compile()  # in place: state_dict keys and the module object stay the same
    global_batch = batch_size * world * int(accelerator.gradient_accumulation_steps)
    if lr_batch:  # linear scaling rule (Goyal et al. 2017), as DeiT's main.py: lr x global batch / 512
        lr = lr * (global_batch / lr_batch)
    groups = build_param_groups(model, weight_decay, param_groups)
    optimizer = torch.optim.AdamW([{**g, "lr": lr * g["lr_scale"]} for g in groups], lr=lr, weight_decay=weight_decay)
    drop_last = mixup is not None or len(train_set) >= 2 * batch_size
    # loader workers start afresh every epoch (not persistent_workers): a worker seeds torch, numpy and
    # random once at start from a draw of this process's torch generator, so fresh workers after the
    # per-epoch seed below augment epoch e the same in a run resumed at e as in the uninterrupted run
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=drop_last,
                        num_workers=num_workers, pin_memory=accelerator.device.type == "cuda")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    bare = accelerator.unwrap_model(model)
    accum = int(accelerator.gradient_accumulation_steps)
    batches_per_epoch = len(loader)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)  # optimizer steps
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_lr_ratio))
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    ema = None
    if model_ema_decay > 0:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(bare, decay=model_ema_decay, exclude_buffers=True)
    loss_fn = loss_fn or default_loss_fn(label_smoothing, distill_weight, distill_temperature)
    fingerprint = _fingerprint(epochs, batch_size, lr, len(train_set), world, accum, ema is not None)
    snapshot_step = handoff_step(snapshot[0], total_steps) if snapshot else None
    scale = {"num_processes": world, "mixed_precision": str(accelerator.mixed_precision),
             "grad_accum_steps": accum, "global_batch": global_batch}
    if snapshot_step is not None:
        scale["snapshot_step"] = snapshot_step

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if ckpt_path is not None and resume:
        state = load_train_state(checkpoint_dir)
        if state is not None:
            if state.get("fingerprint") != fingerprint:
                raise UserError(f"{ckpt_path} was written by a run with {state.get('fingerprint')}, this run has "
                                f"{fingerprint}; delete the directory or pass resume=False to start over")
            bare.load_state_dict(state["model"])
            optimizer.optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.module.load_state_dict(state["ema"])
            history, start_epoch = list(state["history"]), int(state["epoch"])
            accelerator.print(f"{desc}: resumed from {ckpt_path} after epoch {start_epoch}/{epochs}")

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        loader.set_epoch(epoch)
        seed_epoch(seed, epoch, accelerator.process_index)
        sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        log_sums: dict[str, float] = {}
        trace: list[list[float]] = []
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", mininterval=10.0,
                   disable=not (progress and accelerator.is_local_main_process), leave=False)
        for batch_idx, (images, targets) in enumerate(bar):
            if batch_transform is not None:
                images = batch_transform(images)
            labels = targets
            if mixup is not None:
                images, targets = mixup(images, targets)
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    loss, logits, logs = loss_fn(model, images, targets, teacher)
                if not torch.isfinite(loss.detach()).all():
                    raise UserError(f"{desc}: loss is {float(loss.detach())} at step {step} (epoch {epoch + 1}, "
                                    f"batch {batch_idx}); lower the learning rate (lr={lr}) or check the inputs")
                accelerator.backward(loss)
                if accelerator.sync_gradients:  # the last batch of an accumulation window
                    if on_step is not None:
                        on_step(step, total_steps, bare)
                    if grad_clip:
                        accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update(bare, step=step)
                    step += 1
                    if step == snapshot_step and accelerator.is_main_process:
                        _save_state(Path(snapshot[1]), {k: v.detach().cpu().clone() for k, v in bare.state_dict().items()})
            n = labels.shape[0]
            sums["loss"] += float(loss.detach()) * n
            sums["correct"] += float((logits_of(logits).argmax(-1) == hard_labels(targets)).sum())
            sums["seen"] += n
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) * n
            if trace_every and accelerator.sync_gradients and (
                    step % trace_every == 0 or batch_idx == batches_per_epoch - 1):
                trace.append([step, sums["loss"] / sums["seen"], scheduler.get_last_lr()[0]])
            if batch_idx % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                                acc=f"{100 * sums['correct'] / sums['seen']:.1f}",
                                lr=f"{scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        elapsed = time.perf_counter() - t0
        totals = accelerator.reduce(torch.tensor([sums["loss"], sums["correct"], sums["seen"],
                                                  *log_sums.values()], dtype=torch.float64,
                                                 device=accelerator.device), reduction="sum").tolist()
        seen = max(totals[2], 1.0)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": totals[0] / seen, "train_acc": 100.0 * totals[1] / seen,
            "lr": scheduler.get_last_lr()[0], "steps_per_epoch": steps_per_epoch, "epoch_time_s": elapsed,
            "img_per_s": totals[2] / elapsed, **{f"train_{k}": v / seen for k, v in zip(log_sums, totals[3:])},
        }
        if eval_set is not None and ((epoch + 1) % max(eval_every, 1) == 0 or epoch + 1 == epochs):
            result = _evaluate(ema.module if ema is not None else bare, eval_set, eval_batch_size or batch_size,
                               class_names=class_names, accelerator=accelerator, progress=False,
                               num_workers=num_workers, desc="eval")
            record.update(eval_top1=result["top1"], eval_top5=result["top5"])
        accelerator.print(f"{desc} epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        record.update(scale, trace=trace)
        history.append(record)
        if ckpt_path is not None:
            if accelerator.is_main_process:
                state = {"epoch": epoch + 1, "fingerprint": fingerprint, "history": history,
                         "model": {k: v.detach().cpu() for k, v in bare.state_dict().items()},
                         "optimizer": optimizer.optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                if ema is not None:
                    state["ema"] = {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
                _save_state(ckpt_path, state)
            accelerator.wait_for_everyone()
    if ema is not None:  # the run's result is the averaged model (DeiT's --model-ema)
        bare.load_state_dict(ema.module.state_dict())
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluate


def evaluate(model: nn.Module, eval_set: Dataset, batch_size: int, class_names: Sequence[str] | None = None,
             *, accelerator=None, num_workers: int = 0, progress: bool = True, desc: str = "eval",
             num_processes: int = 1, mixed_precision: str = "no", launch_config: str = "") -> dict[str, Any]:
    """Top-1 / top-5 (percent), per-class accuracy (percent, by class name) and the confusion
    matrix (rows = true class, columns = predicted) over the whole `eval_set`; with several
    processes (`num_processes`, `launch_config`, or a launcher's) each evaluates a shard and
    `gather_for_metrics` drops the padding duplicates. `mixed_precision` autocasts the forward."""
    where = launch.plan(num_processes, mixed_precision, launch_config)
    options = dict(class_names=class_names, num_workers=num_workers, progress=progress, desc=desc)
    if where.world_size == 1:
        accelerator = accelerator or make_accelerator(mixed_precision=mixed_precision)
        with handed_back(model):
            return _evaluate(model, eval_set, batch_size, accelerator=accelerator, **options)
    if accelerator is not None:
        raise UserError("pass either an accelerator or num_processes > 1 / launch_config, not both")
    return launch.run(_evaluate_worker, (model, eval_set, batch_size, mixed_precision, options), where)


def _evaluate_worker(model, eval_set, batch_size, mixed_precision, options):
    return _evaluate(model, eval_set, batch_size, accelerator=make_accelerator(mixed_precision=mixed_precision),
                     **options)


@torch.no_grad()
def _evaluate(model: nn.Module, eval_set: Dataset, batch_size: int, class_names: Sequence[str] | None = None,
              *, accelerator, num_workers: int = 0, progress: bool = True, desc: str = "eval") -> dict[str, Any]:
    if len(eval_set) == 0:
        raise UserError("the evaluation set is empty")
    loader = accelerator.prepare(DataLoader(eval_set, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                            pin_memory=accelerator.device.type == "cuda"))
    was_training = model.training
    model = model.to(accelerator.device).eval()
    preds, top5_hits, labels = [], [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", mininterval=10.0, leave=False,
                                disable=not (progress and accelerator.is_local_main_process)):
        with accelerator.autocast():
            logits = logits_of(model(images)).float()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        hit5 = (topk == targets[:, None]).any(-1)
        p, h, t = accelerator.gather_for_metrics((topk[:, 0], hit5, targets))
        preds.append(p.cpu())
        top5_hits.append(h.cpu())
        labels.append(t.cpu())
    model.train(was_training)
    pred, hit5, true = torch.cat(preds), torch.cat(top5_hits), torch.cat(labels)
    num_classes = int(max(len(class_names) if class_names else 0, int(true.max()) + 1, int(pred.max()) + 1))
    confusion = torch.bincount(true * num_classes + pred, minlength=num_classes ** 2).view(num_classes, num_classes)
    names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
    support = confusion.sum(1)
    per_class = {names[i]: (100.0 * float(confusion[i, i]) / float(support[i]) if support[i] else None)
                 for i in range(num_classes)}
    return {
        "top1": 100.0 * float((pred == true).float().mean()),
        "top5": 100.0 * float(hit5.float().mean()),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "num_samples": int(true.numel()),
        "num_processes": int(accelerator.num_processes),
        "mixed_precision": str(accelerator.mixed_precision),
    }
