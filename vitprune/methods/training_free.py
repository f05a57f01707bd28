"""Training-free CLS-attention top-k token pruning (EViT's selection alone), a comparator for DynamicViT.

Method: Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via
Token Reorganizations" (EViT), ICLR 2022 (arXiv:2202.07800). EViT keeps the patch tokens the
class token attends to most, the attention of CLS to each patch averaged over heads (their
eq. 1-2: the "attentiveness" of token j is mean_h softmax(q_cls k^T / sqrt(d))_j). EViT also
fuses the dropped tokens into one extra token and fine-tunes; this comparator does neither:
inattentive tokens are simply dropped and nothing is trained, so it answers "what does
DynamicViT's learned predictor (and its fine-tuning) buy over a free heuristic?". It is named for
what it is, CLS-attention top-k; EViT itself (fusion, fine-tuning, its own block's attention) is
`evit`.

Same locations and keep counts as DynamicViT (`token_schedule.keep_counts`: cumulative
fractions of the patch tokens, CLS excluded). The score at a location comes from the block
just before it (the last block with attention heads since the previous location; a block
pruned to `NoAttention` has none). If no such block exists, the patch tokens' L2 norm is used
instead (documented fallback, no attention to read). CLS (all prefix tokens) is always kept.

The model is patched in place (class swap, as dynamicvit does); no parameters are added,
so its state dict is the baseline's. Train and eval forwards are identical (real gather).
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from vitprune.errors import UserError
from vitprune.methods import pruning_state, selection, token_schedule, vit_ops
from vitprune.methods.method import TOKEN, Flag, Method, restore_entry, state_entry

CONFIG_ATTR = pruning_state.TRAINING_FREE_ATTR  # where apply() records its config (read via pruning_state)


def apply(model: nn.Module, base_rate: float | None = 0.7, schedule: str = "geometric",
          keep_ratios: Sequence[float] | None = None,
          locations: Sequence[int] = token_schedule.DEFAULT_LOCATIONS,
          allow_empty_stage: bool = False) -> nn.Module:
    """Make a timm VisionTransformer drop its least CLS-attended patch tokens (in place); returns it.

    Arguments as `dynamicvit.attach`. Sets `model.vitprune_training_free` (the arguments).
    Re-applying changes the rate. A DynamicViT-attached model is refused (two pruners at once).
    """
    if not isinstance(model, VisionTransformer):
        raise UserError(f"training-free token pruning patches timm VisionTransformer models, got {type(model).__name__}")
    pruning_state.refuse_other_token_method(model, "training-free")
    if model.global_pool != "token" or model.num_prefix_tokens < 1:
        raise UserError(f"training-free (EViT) pruning ranks tokens by CLS attention: it needs a class token and "
                        f"global_pool 'token', got global_pool {model.global_pool!r}")
    locs = vit_ops.check_locations(locations, len(model.blocks))
    vit_ops.check_blocks(model, "training-free pruning")
    # validates the schedule and the empty-stage rule before anything changes
    token_schedule.keep_counts(int(model.patch_embed.num_patches), base_rate, schedule, keep_ratios, locs,
                               allow_empty_stage)
    pruning_state.set_training_free(model, token_schedule.schedule_config(
        base_rate, schedule, keep_ratios, locs, allow_empty_stage))
    model.__class__ = _patched_class(type(model))
    return model


def config(model: nn.Module) -> dict[str, Any]:
    return vit_ops.required_config(pruning_state.training_free(model), "training-free token pruning",
                                   "training_free.apply(model, rate)")


def keep_counts(model: nn.Module, num_patches: int | None = None) -> list[int]:
    """Patch tokens (CLS excluded) kept after each location: DynamicViT's counts for the same config."""
    return token_schedule.recorded_keep_counts(model, config(model), num_patches)


def tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens entering each block, prefix tokens (CLS) INCLUDED, at the model's input size."""
    return vit_ops.tokens_entering_blocks(model, dict(zip(config(model)["locations"], keep_counts(model))))


def score_sources(model: nn.Module) -> list[int | None]:
    """Per location, the block whose CLS attention ranks the tokens (None: no attention, L2-norm fallback)."""
    locs = config(model)["locations"]
    out, prev = [], 0
    for loc in locs:
        src = None
        for j in range(loc - 1, prev - 1, -1):
            if getattr(model.blocks[j].attn, "num_heads", 0) > 0:
                src = j
                break
        out.append(src)
        prev = loc
    return out


def describe(model: nn.Module) -> dict[str, Any]:
    """Config, counts, tokens per block and score sources, for metrics.json."""
    return {**config(model), "num_patches": int(model.patch_embed.num_patches), "keep_counts": keep_counts(model),
            "tokens_per_block": tokens_per_block(model), "tokens_include_cls": True,
            "score_blocks": score_sources(model)}


def _block_with_cls(blk: nn.Module, x: torch.Tensor, prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
    ls1, ls2, dp1, dp2 = vit_ops.residual_scales(blk)
    a, cls_attn = vit_ops.attention_with_cls(blk.attn, blk.norm1(x), prefix)
    x = x + dp1(ls1(a))
    return x + dp2(ls2(blk.mlp(blk.norm2(x)))), cls_attn


def pruned_features(model: nn.Module, images: torch.Tensor, record: bool = False):
    """Forward with CLS-attention token dropping. Returns (normed tokens, kept original indices per stage)."""
    x = vit_ops.embed(model, images)
    prefix = model.num_prefix_tokens
    B = x.shape[0]
    n = x.shape[1] - prefix
    locs = config(model)["locations"]
    counts = dict(zip(locs, keep_counts(model, n)))
    sources = set(s for s in score_sources(model) if s is not None)
    origin = torch.arange(n, device=x.device).expand(B, n)
    kept, cls_attn = [], None
    for i, blk in enumerate(model.blocks):
        if i in counts:
            current = x.shape[1] - prefix
            k = min(counts[i], current)
            if k < current:
                # fallback without any attention since the last location: token L2 norm
                score = cls_attn if cls_attn is not None else x[:, prefix:].norm(dim=-1)
                # ranked in log space on rounded keys, so an exported graph keeps the same tokens
                # kept in original order: a later stage breaks ties by original index
                idx = selection.top_k(score.clamp_min(1e-30).log(), k, step=selection.STEP,
                                      low=selection.LOG_RANGE[0], high=selection.LOG_RANGE[1], in_order=True)
                x = torch.cat([x[:, :prefix], vit_ops.gather_tokens(x[:, prefix:], idx)], dim=1)
                origin = origin.gather(1, idx)
            if record:
                kept.append(origin.clone())
            cls_attn = None
        if i in sources and i + 1 <= max(locs):
            x, cls_attn = _block_with_cls(blk, x, prefix)
        else:
            x = blk(x)
    return model.norm(x), kept


@torch.no_grad()
def kept_token_masks(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and, per stage, a bool mask [B, N] over the original patch grid of the kept tokens."""
    return vit_ops.logits_and_kept_masks(model, images, pruned_features)


class _TrainingFreeMixin:
    """Forward of a training-free pruned VisionTransformer (same in train and eval mode)."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        vit_ops.refuse_attn_mask(attn_mask, is_causal, "training-free pruned")
        return pruned_features(self, x)[0]


def _patched_class(base: type) -> type:
    return vit_ops.mixed_class(_TrainingFreeMixin, base, "TrainingFree", sys.modules[__name__])


def _from_flags(values: dict[str, Any]) -> dict[str, Any] | None:
    if not values.get("training_free"):
        return None
    options = token_schedule.options_from_flags(values)
    if options is None:
        raise UserError("--training-free needs the keep schedule: give --base-rate R (or --keep-ratios)")
    return options


METHOD = Method(
    name="training_free", label="CLS-attention top-k, training-free", marker="v", kind=TOKEN,
    apply=apply, state=state_entry("training_free", pruning_state.training_free),
    restore=restore_entry("training_free", apply), describe=describe, tokens_per_block=tokens_per_block,
    kept_token_masks=kept_token_masks, from_flags=_from_flags,
    flags=(Flag("--training-free", {"action": "store_true", "help": "the keep schedule drives the CLS-attention top-k "
                                    "CLS-attention pruning instead of DynamicViT (nothing trained)"}),
           *token_schedule.SCHEDULE_FLAGS),
    from_params=token_schedule.options_from_params,
    row_label=lambda params: f"CLS-attention top-k ρ={params['base_rate']:g}")
"""CLS-attention top-k without training: EViT's selection alone (Liang et al. 2022)."""
