"""Train / evaluate loops on Hugging Face `accelerate`: one CPU process, one GPU or many
(`accelerate launch` / `torchrun`) run the same code.

`batch_size` is per process (the global batch is `batch_size * num_processes`). Training
is AdamW with a per-step linear warm-up then cosine decay, label-smoothed cross-entropy and
an optional distillation term from a teacher's soft targets; a checkpoint is written after
every epoch (`<checkpoint_dir>/last.pt`) and a new call resumes from it. Shuffling and
augmentation are seeded per epoch, so an interrupted-and-resumed run retraces the
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vitprune.data_torch import preload, random_crop_flip  # noqa: F401  (moved to the data side; engine.X still works)
from vitprune.errors import UserError
from vitprune.torchutil import logits as logits_of

CHECKPOINT_NAME = "last.pt"

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, "nn.Module | None"],
                  "tuple[torch.Tensor, torch.Tensor, dict[str, float]]"]


# --------------------------------------------------------------------------- helpers


def make_accelerator(seed: int = 0, **kwargs: Any):
    """An `accelerate.Accelerator` whose prepared loaders shuffle reproducibly (seed + epoch)."""
    from accelerate import Accelerator, DataLoaderConfiguration

    config = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=int(seed))
    return Accelerator(dataloader_config=config, **kwargs)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Soft-target KL(teacher || student) at temperature T, scaled by T^2 so its gradient
    size does not depend on T (Hinton et al. 2015, "Distilling the Knowledge in a Neural Network")."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (t * t)


def default_loss_fn(label_smoothing: float = 0.1, distill_weight: float = 0.0,
                    distill_temperature: float = 1.0) -> LossFn:
    """CE (label-smoothed) mixed with distillation: (1 - w) * CE + w * KL_T when a teacher is given."""
    def loss_fn(model, images, targets, teacher):
        logits = logits_of(model(images))
        ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        logs = {"ce": float(ce.detach())}
        if teacher is not None and distill_weight > 0:
            with torch.no_grad():
                teacher_logits = logits_of(teacher(images))
            kd = distillation_loss(logits, teacher_logits, distill_temperature)
            logs["distill"] = float(kd.detach())
            return (1.0 - distill_weight) * ce + distill_weight * kd, logits, logs
        return ce, logits, logs
    return loss_fn


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


def _fingerprint(epochs: int, batch_size: int, lr: float, num_train: int, world: int) -> dict[str, Any]:
    return {"epochs": int(epochs), "batch_size": int(batch_size), "lr": float(lr),
            "num_train": int(num_train), "num_processes": int(world)}


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
          epochs: int, batch_size: int, lr: float, weight_decay: float = 0.05,
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
          desc: str = "train") -> list[dict[str, Any]]:
    """Train `model` in place; return the per-epoch history (train_loss, train_acc, lr,
    epoch_time_s, img_per_s, eval_top1/eval_top5 when `eval_set` is given, loss_fn logs, and
    `trace`: [global step, running mean loss of this process, lr] every `trace_every` steps).

    Hooks (this docstring is their contract; tests/test_engine.py exercises each):
    `loss_fn(model, images, targets, teacher) -> (loss, logits, logs)` replaces CE + distillation; `on_step(step, total_steps, model)` runs after
    backward, before each optimizer step; `param_groups=[{"params", "lr_scale"}]`.
    `batch_transform(images)` augments each training batch on the device.
    A NaN/inf loss raises UserError naming the step.
    """
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise UserError(f"need epochs >= 1, batch_size >= 1 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if len(train_set) == 0:
        raise UserError("the training set is empty")
    accelerator = accelerator or make_accelerator(seed)
    from accelerate.utils import set_seed

    set_seed(seed)
    groups = build_param_groups(model, weight_decay, param_groups)
    optimizer = torch.optim.AdamW([{**g, "lr": lr * g["lr_scale"]} for g in groups], lr=lr, weight_decay=weight_decay)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=len(train_set) >= 2 * batch_size,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer.optimizer, lambda s: warmup_cosine(s, total_steps, warmup_steps, min_lr_ratio))
    if teacher is not None:
        teacher = teacher.to(accelerator.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    loss_fn = loss_fn or default_loss_fn(label_smoothing, distill_weight, distill_temperature)
    fingerprint = _fingerprint(epochs, batch_size, lr, len(train_set), accelerator.num_processes)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir else None
    if ckpt_path is not None and resume:
        state = load_train_state(checkpoint_dir)
        if state is not None:
            if state.get("fingerprint") != fingerprint:
                raise UserError(f"{ckpt_path} was written by a run with {state.get('fingerprint')}, this run has "
                                f"{fingerprint}; delete the directory or pass resume=False to start over")
            accelerator.unwrap_model(model).load_state_dict(state["model"])
            optimizer.optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, start_epoch = list(state["history"]), int(state["epoch"])
            accelerator.print(f"{desc}: resumed from {ckpt_path} after epoch {start_epoch}/{epochs}")

    step = start_epoch * steps_per_epoch
    for epoch in range(start_epoch, epochs):
        model.train()
        loader.set_epoch(epoch)
        # per-epoch, per-process seed for augmentation/dropout/Gumbel noise: resume retraces the run
        torch.manual_seed(seed * 100_003 + epoch * 1009 + accelerator.process_index)
        sums = {"loss": 0.0, "correct": 0.0, "seen": 0.0}
        log_sums: dict[str, float] = {}
        trace: list[list[float]] = []
        t0 = time.perf_counter()
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", mininterval=10.0,
                   disable=not (progress and accelerator.is_local_main_process), leave=False)
        for batch_idx, (images, targets) in enumerate(bar):
            if batch_transform is not None:
                images = batch_transform(images)
            loss, logits, logs = loss_fn(model, images, targets, teacher)
            if not torch.isfinite(loss.detach()).all():
                raise UserError(f"{desc}: loss is {float(loss.detach())} at step {step} (epoch {epoch + 1}, "
                                f"batch {batch_idx}); lower the learning rate (lr={lr}) or check the inputs")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            if on_step is not None:
                on_step(step, total_steps, accelerator.unwrap_model(model))
            if grad_clip:
                accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            n = targets.shape[0]
            sums["loss"] += float(loss.detach()) * n
            sums["correct"] += float((logits_of(logits).argmax(-1) == targets).sum())
            sums["seen"] += n
            for k, v in logs.items():
                log_sums[k] = log_sums.get(k, 0.0) + float(v) * n
            if trace_every and (step % trace_every == 0 or batch_idx == steps_per_epoch - 1):
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
            "lr": scheduler.get_last_lr()[0], "steps_per_epoch": steps_per_epoch, "epoch_time_s": elapsed, "img_per_s": totals[2] / elapsed,
            **{f"train_{k}": v / seen for k, v in zip(log_sums, totals[3:])},
        }
        if eval_set is not None and ((epoch + 1) % max(eval_every, 1) == 0 or epoch + 1 == epochs):
            result = evaluate(accelerator.unwrap_model(model), eval_set, eval_batch_size or batch_size,
                              class_names=class_names, accelerator=accelerator, progress=False,
                              num_workers=num_workers)
            record.update(eval_top1=result["top1"], eval_top5=result["top5"])
        accelerator.print(f"{desc} epoch {epoch + 1}/{epochs}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in record.items() if k != "epoch"))
        record["trace"] = trace
        history.append(record)
        if ckpt_path is not None:
            if accelerator.is_main_process:
                _save_state(ckpt_path, {
                    "epoch": epoch + 1, "fingerprint": fingerprint, "history": history,
                    "model": {k: v.detach().cpu() for k, v in accelerator.unwrap_model(model).state_dict().items()},
                    "optimizer": optimizer.optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                })
            accelerator.wait_for_everyone()
    model.eval()
    return history


# --------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(model: nn.Module, eval_set: Dataset, batch_size: int, class_names: Sequence[str] | None = None,
             *, accelerator=None, num_workers: int = 0, progress: bool = True,
             desc: str = "eval") -> dict[str, Any]:
    """Top-1 / top-5 (percent), per-class accuracy (percent, by class name) and the confusion
    matrix (rows = true class, columns = predicted) over the whole `eval_set`; with several
    processes each evaluates a shard and `gather_for_metrics` drops the padding duplicates."""
    if len(eval_set) == 0:
        raise UserError("the evaluation set is empty")
    accelerator = accelerator or make_accelerator()
    loader = accelerator.prepare(DataLoader(eval_set, batch_size=batch_size, shuffle=False,
                                            num_workers=num_workers))
    was_training = model.training
    model = model.to(accelerator.device).eval()
    preds, top5_hits, labels = [], [], []
    for images, targets in tqdm(loader, desc=desc, unit="batch", mininterval=10.0, leave=False,
                                disable=not (progress and accelerator.is_local_main_process)):
        logits = logits_of(model(images))
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
    }
