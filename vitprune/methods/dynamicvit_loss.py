"""DynamicViT's training objective, and the side outputs of the training forward it reads.

The token-pruning forward (`dynamicvit`) leaves a `TrainAux` on the model; the loss pops it
and adds the keep-ratio and distillation terms to the classification loss. Kept apart from
the forwards because this is the training recipe (weights and defaults from the official
code), not the method: evaluation, export and counting never touch it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from vitprune.errors import UserError
from vitprune.methods import pruning_state
from vitprune.torchutil import unwrap


@dataclass
class TrainAux:
    """Side outputs of the training-mode forward that the DynamicViT losses need."""

    decisions: list[torch.Tensor]  # per stage, [B, N] cumulative hard keep decisions (with ST gradient)
    target_ratios: list[float]     # per stage, keep_count / N (what inference keeps)
    tokens: torch.Tensor           # [B, N, C] final normed patch tokens
    mask: torch.Tensor             # [B, N] final keep mask, detached
    num_prefix_tokens: int
    gathered: bool = False         # features came from the gathered forward (only kept tokens)


def pop_aux(model: nn.Module) -> TrainAux:
    """The side outputs of the last training-mode forward (cleared once read)."""
    bare = unwrap(model)
    aux = getattr(bare, "_tp_aux", None)
    if aux is None:
        raise UserError("no training-mode token-pruning forward to read: attach token pruning and call "
                        "the model in train mode before the DynamicViT loss")
    bare._tp_aux = None
    return aux


def make_loss_fn(clf_weight: float = 1.0, ratio_weight: float = 2.0, distill_weight: float = 0.5,
                 token_distill_weight: float | None = None, label_smoothing: float = 0.1,
                 temperature: float = 1.0) -> Callable:
    """DynamicViT objective for engine.train's `loss_fn(model, images, targets, teacher)` hook.

    loss = clf_weight * CE(label-smoothed)
         + ratio_weight * mean_s mean_b (kept fraction_{b,s} - target_s)^2  (per image, then over stages)
         + distill_weight * KL(teacher logits || student logits) * T^2
         + token_distill_weight * MSE(kept student patch tokens, teacher tokens)
    Defaults from the official DeiT recipe (main_dynamic_vit.py / losses.DistillDiffPruningLoss:
    clf 1.0, ratiow 2.0, distillw 0.5 for both distillation terms, MSE token loss, T = 1). The
    keep-ratio target per stage is keep_count / N, the fraction inference really keeps (the
    official uses the ratio itself; they differ by under 1/N). Without a teacher the
    distillation terms are 0.
    """
    token_w = distill_weight if token_distill_weight is None else token_distill_weight
    for name, value in (("clf_weight", clf_weight), ("ratio_weight", ratio_weight),
                        ("distill_weight", distill_weight), ("token_distill_weight", token_w),
                        ("label_smoothing", label_smoothing)):
        if value < 0:
            raise UserError(f"{name} must be >= 0, got {value}")
    if temperature <= 0:
        raise UserError(f"temperature must be > 0, got {temperature}")

    def loss_fn(model, images, targets, teacher=None):
        logits = model(images)
        aux = pop_aux(model)
        if targets.dim() == 2:  # soft targets (mixup): soft cross-entropy
            ce = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            ce = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        # official: pos_ratio = decision.mean(1); ((pos_ratio - ratio)^2).mean(); summed, / stages
        ratio_terms = [((d.mean(dim=1) - r) ** 2).mean() for d, r in zip(aux.decisions, aux.target_ratios)]
        ratio_loss = torch.stack(ratio_terms).sum() / len(ratio_terms)
        loss = clf_weight * ce + ratio_weight * ratio_loss
        logs = {"ce": ce.item(), "ratio_loss": ratio_loss.item()}
        for s, d in enumerate(aux.decisions):
            logs[f"keep_frac_{s}"] = d.detach().mean().item()
        if teacher is not None and (distill_weight > 0 or token_w > 0):
            kl, token_mse = _distillation_terms(teacher, images, logits, aux, temperature)
            loss = loss + distill_weight * kl + token_w * token_mse
            logs.update(kl=kl.item(), token_mse=token_mse.item())
        logs["loss"] = loss.item()
        return loss, logits, logs

    return loss_fn


def _distillation_terms(teacher, images, logits, aux: TrainAux, temperature: float):
    bare_teacher = unwrap(teacher)
    if pruning_state.dynamicvit(bare_teacher) is not None:
        raise UserError("the DynamicViT teacher must be the unpruned model, but it has token pruning attached")
    with torch.no_grad():
        t_feats = bare_teacher.forward_features(images)
        t_logits = bare_teacher.forward_head(t_feats)
    t_tokens = t_feats[:, getattr(bare_teacher, "num_prefix_tokens", aux.num_prefix_tokens):]
    if t_tokens.shape != aux.tokens.shape:
        raise UserError(f"teacher patch tokens {tuple(t_tokens.shape)} do not match the student's "
                        f"{tuple(aux.tokens.shape)}; the teacher must be the same architecture, unpruned")
    T = temperature
    kl = F.kl_div(F.log_softmax(logits / T, dim=-1), F.log_softmax(t_logits / T, dim=-1),
                  reduction="batchmean", log_target=True) * (T * T)
    keep = aux.mask > 0.5  # official: MSE over the tokens kept after the last stage
    if keep.any():
        token_mse = ((aux.tokens[keep] - t_tokens[keep]) ** 2).mean()
    else:
        token_mse = logits.new_zeros(())
    return kl, token_mse
