"""Train / evaluate loops on Hugging Face `accelerate`: one CPU process, one GPU or many
run the same code.

`train(model, train_set, config)` trains with a `recipe.TrainConfig` (what to train with) and
`recipe.Hooks` (what a method plugs in). `num_processes > 1` (or an accelerate config file,
`launch_config`) makes `train` and `evaluate` fork that many workers through
`vitprune.train.launch` (accelerate's notebook launcher, gloo on CPU, NCCL on GPUs) and copy the
trained weights back into the caller's model; a script started by `accelerate launch` /
`torchrun` calls them with the default 1 and gets the launcher's processes. Training is AdamW with
a per-step linear warm-up then cosine decay, label-smoothed cross-entropy and an optional
distillation term from a teacher's soft targets, and optionally timm's recipe pieces (Mixup /
CutMix, model EMA, gradient accumulation, `torch.compile`, bf16 / fp16 autocast). A checkpoint
is written after every epoch (`<checkpoint_dir>/last.pt`) and a new call resumes from it.
Shuffling, augmentation (also in loader workers) and Mixup are seeded per epoch (`seed_epoch`),
so an interrupted-and-resumed run retraces the uninterrupted one. Models come back on the device
they came on, bare (`handed_back`): the caller never holds a model on the training device or
under autocast.
"""

from __future__ import annotations

import math
import os
import re
import time
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from vitprune.progress import bar as progress_bar
from vitprune.errors import UserError
from vitprune.torchutil import logits as logits_of
from vitprune.train import launch
from vitprune.train.recipe import (Hooks, StepHooks, TrainConfig, build_param_groups, default_loss_fn,
                                   handoff_step, hard_labels, make_mixup, seed_epoch, warmup_cosine)

CHECKPOINT_NAME = "last.pt"


def make_accelerator(seed: int = 0, mixed_precision: str = "no", gradient_accumulation_steps: int = 1,
                     find_unused_parameters: bool = False, log_dir: str = "", **kwargs: Any):
    """An `accelerate.Accelerator` whose prepared loaders shuffle reproducibly (seed + epoch),
    with autocast at `mixed_precision` (no | bf16 | fp16 | auto) and accelerate's gradient accumulation.
    `find_unused_parameters`: DDP (> 1 process) expects steps in which some parameters get no
    gradient (it then walks the autograd graph once per step, so it is off unless asked for).
    `log_dir`: accelerate's TensorBoard tracker writes there (`tensorboard --logdir runs/`)."""
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
    if log_dir:
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise UserError("log_dir asks for TensorBoard curves but tensorboard is not installed: "
                            "pip install tensorboard (it is in vitprune's dependencies)")
        kwargs.update(log_with="tensorboard", project_dir=str(log_dir))
    try:
        ddp = DistributedDataParallelKwargs(find_unused_parameters=bool(find_unused_parameters))
        return Accelerator(dataloader_config=config, mixed_precision=mixed_precision,
                           gradient_accumulation_steps=int(gradient_accumulation_steps),
                           kwargs_handlers=[ddp], **kwargs)
    except ValueError as exc:  # e.g. fp16 without a GPU
        raise UserError(f"accelerate refused mixed_precision={mixed_precision!r}: {exc}") from exc


# --------------------------------------------------------------------------- checkpoint/resume


def _fingerprint(config: TrainConfig, lr: float, num_train: int, world: int, accum: int) -> dict[str, Any]:
    """What a per-epoch checkpoint must agree on to be resumed (`lr` as scaled)."""
    out = {"epochs": int(config.epochs), "batch_size": int(config.batch_size), "lr": float(lr),
           "num_train": int(num_train), "num_processes": int(world)}
    if accum != 1:
        out["grad_accum_steps"] = int(accum)
    if config.model_ema_decay > 0:
        out["model_ema"] = True
    return out


def _save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


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


def train(model: nn.Module, train_set: Dataset, config: TrainConfig, eval_set: Dataset | None = None, *,
          hooks: Hooks = Hooks(), teacher: nn.Module | None = None,
          checkpoint_dir: str | os.PathLike | None = None,
          handoff: tuple[float, str | os.PathLike] | None = None,
          class_names: Sequence[str] | None = None, accelerator=None, desc: str = "train") -> list[dict[str, Any]]:
    """Train `model` in place with `config` and `hooks`; return the per-epoch history
    (train_loss, train_acc, lr, epoch_time_s, img_per_s, eval_top1/eval_top5 when `eval_set` is
    given, the loss hook's logs, num_processes, mixed_precision, and `trace`: [global step,
    running mean loss of this process, lr] every `config.trace_every` optimizer steps). A NaN/inf
    loss raises UserError naming the step.

    Several processes train the same model with DDP; the weights come back into `model` and an
    `on_step` object's plain attributes into `hooks.on_step`. `handoff=(fraction, path)` also saves
    the model's state dict (CPU tensors) to `path` once `handoff_step(fraction, total optimizer
    steps)` steps are done: a hand-off point (notebook 04 continues the model as it was then with
    another pruning method, so that both stages together cost one fine-tune)."""
    job = dict(config=config, hooks=hooks, teacher=teacher, checkpoint_dir=checkpoint_dir, handoff=handoff,
               class_names=class_names, desc=desc)
    where = launch.plan(config.num_processes, config.mixed_precision, config.launch_config)
    if where.world_size == 1:
        with handed_back(model), handed_back(teacher):
            return _Trainer(model, train_set, eval_set, accelerator=accelerator, **job).run()
    if accelerator is not None:
        raise UserError("pass either an accelerator or num_processes > 1 / launch_config, not both")
    out = launch.run(_train_worker, (model, train_set, eval_set, job), where)
    model.load_state_dict(out["model"])
    for hook, state in zip(_stateful_hooks(hooks.on_step), out["on_step"]):
        vars(hook).update(state)
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


def _stateful_hooks(on_step: Any) -> list[Any]:
    """The step hook objects whose plain attributes a worker hands back (a `StepHooks`' parts)."""
    parts = on_step.parts if isinstance(on_step, StepHooks) else [on_step]
    return [h for h in parts if h is not None and not isinstance(h, types.FunctionType) and hasattr(h, "__dict__")]


def _train_worker(model, train_set, eval_set, job: dict[str, Any]) -> dict[str, Any]:
    """One launched process: train, then hand back the weights, history and hook state."""
    history = _Trainer(model, train_set, eval_set, **job).run()
    states = [{k: v for k, v in vars(h).items() if _plain(v)} for h in _stateful_hooks(job["hooks"].on_step)]
    return {"model": _cpu_state(model), "history": history, "on_step": states}


class _Trainer:
    """The training loop of this process (see `train`): set up in `__init__`, `run` the epochs."""

    def __init__(self, model: nn.Module, train_set: Dataset, eval_set: Dataset | None, *, config: TrainConfig,
                 hooks: Hooks, teacher, checkpoint_dir, handoff, class_names, desc: str, accelerator=None):
        c = config
        if c.epochs < 1 or c.batch_size < 1 or not c.lr > 0:
            raise UserError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {c.epochs}, {c.batch_size}, {c.lr}")
        if len(train_set) == 0:
            raise UserError("the training set is empty")
        if not 0.0 <= c.model_ema_decay < 1.0:
            raise UserError(f"model_ema_decay must be in [0, 1), got {c.model_ema_decay}")
        if handoff and not 0.0 < handoff[0] <= 1.0:
            raise UserError(f"the hand-off fraction must be in (0, 1], got {handoff[0]}")
        self.config, self.hooks, self.eval_set, self.class_names, self.desc = c, hooks, eval_set, class_names, desc
        self.acc = acc = accelerator or make_accelerator(c.seed, c.mixed_precision, c.grad_accum_steps,
                                                         hooks.leaves_unused_parameters, log_dir=c.log_dir)
        if c.log_dir:  # one TensorBoard run per training call, named by its description
            acc.init_trackers(re.sub(r"[^\w.=-]+", "_", desc).strip("_") or "train")
        from accelerate.utils import set_seed

        set_seed(c.seed)
        self.mixup = make_mixup(model, c, class_names)
        world = acc.num_processes
        if self.mixup is not None:
            if c.batch_size % 2:
                raise UserError(f"Mixup/CutMix mixes pairs within a batch: batch_size must be even, got {c.batch_size}")
            if len(train_set) < c.batch_size * world:
                raise UserError(f"Mixup/CutMix drops partial batches: {len(train_set)} training images are fewer "
                                f"than one batch of {c.batch_size} x {world} processes")
        if world > 1 and acc.device.type == "cuda" and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            # batch statistics over the global batch, as one process has them (same state_dict keys);
            # torch's SyncBatchNorm is GPU-only, so CPU workers keep per-process statistics
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if c.compile_model:
            model.compile()  # in place: state_dict keys and the module object stay the same
        self.accum = int(acc.gradient_accumulation_steps)
        global_batch = c.batch_size * world * self.accum
        # linear scaling rule (Goyal et al. 2017), as DeiT's main.py: lr x global batch / 512
        self.lr = c.lr * (global_batch / c.lr_batch) if c.lr_batch else c.lr
        groups = build_param_groups(model, c.weight_decay, hooks.param_groups)
        optimizer = torch.optim.AdamW([{**g, "lr": self.lr * g["lr_scale"]} for g in groups], lr=self.lr,
                                      weight_decay=c.weight_decay)
        # loader workers start afresh every epoch (not persistent_workers): a worker seeds torch, numpy and
        # random once at start from a draw of this process's torch generator, so fresh workers after the
        # per-epoch seed augment epoch e the same in a run resumed at e as in the uninterrupted run
        loader = DataLoader(train_set, batch_size=c.batch_size, shuffle=True,
                            drop_last=self.mixup is not None or len(train_set) >= 2 * c.batch_size,
                            num_workers=c.num_workers, pin_memory=acc.device.type == "cuda")
        self.model, self.optimizer, self.loader = acc.prepare(model, optimizer, loader)
        self.bare = acc.unwrap_model(self.model)
        self.steps_per_epoch = math.ceil(len(self.loader) / self.accum)  # optimizer steps
        self.total_steps = c.epochs * self.steps_per_epoch
        warmup_steps = int(round(c.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer, lambda s: warmup_cosine(s, self.total_steps, warmup_steps, c.min_lr_ratio))
        self.teacher = teacher
        if teacher is not None:
            self.teacher = teacher.to(acc.device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.ema = None
        if c.model_ema_decay > 0:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.bare, decay=c.model_ema_decay, exclude_buffers=True)
        self.loss_fn = hooks.loss_fn or default_loss_fn(c.label_smoothing, c.distill_weight, c.distill_temperature)
        self.fingerprint = _fingerprint(c, self.lr, len(train_set), world, self.accum)
        self.handoff = handoff
        self.handoff_at_step = handoff_step(handoff[0], self.total_steps) if handoff else None
        self.scale = {"num_processes": world, "mixed_precision": str(acc.mixed_precision),
                      "grad_accum_steps": self.accum, "global_batch": global_batch}
        if self.handoff_at_step is not None:
            self.scale["handoff_at_step"] = self.handoff_at_step
        self.ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
        self.step = 0

    def run(self) -> list[dict[str, Any]]:
        history, start_epoch = self._resume()
        self.step = start_epoch * self.steps_per_epoch
        for epoch in range(start_epoch, self.config.epochs):
            history.append(self._epoch(epoch))
            self._save(epoch, history)
        if self.ema is not None:  # the run's result is the averaged model (DeiT's --model-ema)
            self.bare.load_state_dict(self.ema.module.state_dict())
        if self.config.log_dir:
            self.acc.end_training()
        self.model.eval()
        return history

    def _resume(self) -> tuple[list[dict[str, Any]], int]:
        if self.ckpt_path is None or not self.config.resume:
            return [], 0
        state = load_train_state(self.ckpt_path.parent)
        if state is None:
            return [], 0
        if state.get("fingerprint") != self.fingerprint:
            raise UserError(f"{self.ckpt_path} was written by a run with {state.get('fingerprint')}, this run has "
                            f"{self.fingerprint}; delete the directory or pass resume=False to start over")
        self.bare.load_state_dict(state["model"])
        self.optimizer.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])
        epoch = int(state["epoch"])
        self.acc.print(f"{self.desc}: resumed from {self.ckpt_path} after epoch {epoch}/{self.config.epochs}")
        return list(state["history"]), epoch

    def _optimizer_step(self) -> None:
        """The end of an accumulation window: hook, clip, step, EMA, hand-off save."""
        if self.hooks.on_step is not None:
            self.hooks.on_step(self.step, self.total_steps, self.bare)
        if self.config.grad_clip:
            self.acc.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.bare, step=self.step)
        self.step += 1
        if self.step == self.handoff_at_step and self.acc.is_main_process:
            _save_state(Path(self.handoff[1]), {k: v.clone() for k, v in _cpu_state(self.bare).items()})

    def _epoch(self, epoch: int) -> dict[str, Any]:
        c, acc, epochs = self.config, self.acc, self.config.epochs
        self.model.train()
        self.loader.set_epoch(epoch)
        seed_epoch(c.seed, epoch, acc.process_index)
        sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        log_sums: dict[str, float] = {}
        trace: list[list[float]] = []
        t0 = time.perf_counter()
        bar = progress_bar(self.loader, desc=f"{self.desc} {epoch + 1}/{epochs}", unit="batch", mininterval=10.0,
                   disable=not (c.progress and acc.is_local_main_process), leave=False)
        for batch_idx, (images, targets) in enumerate(bar):
            if self.hooks.batch_transform is not None:
                images = self.hooks.batch_transform(images)
            labels = targets
            if self.mixup is not None:
                images, targets = self.mixup(images, targets)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, logits, logs = self.loss_fn(self.model, images, targets, self.teacher)
                if not torch.isfinite(loss.detach()).all():
                    raise UserError(f"{self.desc}: loss is {float(loss.detach())} at step {self.step} (epoch "
                                    f"{epoch + 1}, batch {batch_idx}); lower the learning rate (lr={self.lr}) "
                                    "or check the inputs")
                acc.backward(loss)
                if acc.sync_gradients:  # the last batch of an accumulation window
                    self._optimizer_step()
            n = labels.shape[0]
            sums["loss"] += float(loss.detach()) * n
            sums["correct"] += float((logits_of(logits).argmax(-1) == hard_labels(targets)).sum())
            sums["seen"] += n
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) * n
            if c.trace_every and acc.sync_gradients and (
                    self.step % c.trace_every == 0 or batch_idx == len(self.loader) - 1):
                trace.append([self.step, sums["loss"] / sums["seen"], self.scheduler.get_last_lr()[0]])
                if c.log_dir:  # live curves: this process's running means (accelerate logs on the main one)
                    acc.log({"train/loss": trace[-1][1], "train/lr": trace[-1][2],
                             **{f"train/{k}": v / sums["seen"] for k, v in log_sums.items()}}, step=self.step)
            if batch_idx % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / sums['seen']:.3f}",
                                acc=f"{100 * sums['correct'] / sums['seen']:.1f}",
                                lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
        bar.close()
        return self._record(epoch, time.perf_counter() - t0, sums, log_sums, trace)

    def _record(self, epoch: int, elapsed: float, sums: dict[str, float], log_sums: dict[str, float],
                trace: list[list[float]]) -> dict[str, Any]:
        """The epoch's history record: totals over all processes, and the evaluation when it is due."""
        c, acc = self.config, self.acc
        totals = acc.reduce(torch.tensor([sums["loss"], sums["correct"], sums["seen"], *log_sums.values()],
                                         dtype=torch.float64, device=acc.device), reduction="sum").tolist()
        seen = max(totals[2], 1.0)
        record: dict[str, Any] = {
            "epoch": epoch + 1, "train_loss": totals[0] / seen, "train_acc": 100.0 * totals[1] / seen,
            "lr": self.scheduler.get_last_lr()[0], "steps_per_epoch": self.steps_per_epoch,
            "epoch_time_s": elapsed, "img_per_s": totals[2] / elapsed,
            **{f"train_{k}": v / seen for k, v in zip(log_sums, totals[3:])},
        }
        if self.eval_set is not None and ((epoch + 1) % max(c.eval_every, 1) == 0 or epoch + 1 == c.epochs):
            result = _evaluate(self.ema.module if self.ema is not None else self.bare, self.eval_set,
                               c.eval_batch_size or c.batch_size, class_names=self.class_names, accelerator=acc,
                               progress=False, num_workers=c.num_workers, desc="eval")
            record.update(eval_top1=result["top1"], eval_top5=result["top5"])
        if c.log_dir:
            acc.log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, step=self.step)
        acc.print(f"{self.desc} epoch {epoch + 1}/{c.epochs}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        record.update(self.scale, trace=trace)
        return record

    def _save(self, epoch: int, history: list[dict[str, Any]]) -> None:
        if self.ckpt_path is None:
            return
        if self.acc.is_main_process:
            state = {"epoch": epoch + 1, "fingerprint": self.fingerprint, "history": history,
                     "model": _cpu_state(self.bare), "optimizer": self.optimizer.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict()}
            if self.ema is not None:
                state["ema"] = _cpu_state(self.ema.module)
            _save_state(self.ckpt_path, state)
        self.acc.wait_for_everyone()


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
    for images, targets in progress_bar(loader, desc=desc, unit="batch", mininterval=10.0, leave=False,
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
