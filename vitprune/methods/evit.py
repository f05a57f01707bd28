"""EViT: keep the attentive tokens, fuse the inattentive ones into one (trainable, no new parameters).

Method: Liang, Ge, Tong, Song, Wang, Xie, "Not All Patches are What You Need: Expediting Vision
Transformers via Token Reorganizations", ICLR 2022 (arXiv:2202.07800). Our own implementation,
held to the official code's outputs (github.com/youweiliang/evit, `evit.py`; its logits on fixed
weights and images are in tests/fixtures/official/evit.pt):

- Where: inside each location's block (DeiT: blocks 3, 6 and 9), after the attention branch and
  before the MLP, so that block's MLP and every later block run on fewer tokens.
- Which tokens: the attentiveness of token j is the class token's attention weight on it,
  averaged over heads (paper eq. 2, `attn[:, :, 0, 1:].mean(1)` of the same block). The top
  ceil(keep_rate * (N - 1)) of the N - 1 non-class tokens stay; a fused token from an earlier
  location is one of those candidates, as in the official code.
- Fusion (paper eq. 3): the dropped tokens become one extra token, their sum weighted by their
  attentiveness (the raw weights, not renormalised, as the official code does), appended last.
- `keep_rate` is one rate for every location (the official `*_shrink_base` models) or one per
  location; `rate_for_macs` finds the one rate whose MACs come closest to another row's, for a
  contest at equal MACs. Tokens per block count CLS and the fused token.

The official code trains with the keep rate lowered from 1 over its first epochs; a fine-tune here
keeps the final rate throughout (notebook 02's recipe without DynamicViT's own parts: cross-entropy
plus logit distillation, the model at `lr * backbone_lr_scale`, cls_token and pos_embed fixed). The
selection ranks attention weights by their float values (`selection.EXACT_STEP`) and keeps the
chosen tokens in their original order, the fused token last. Nothing is added to the state dict.
"""

from __future__ import annotations

import copy
import math
import sys
from typing import Any, Sequence

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import pruning_state, selection, token_schedule, vit_ops
from vitprune.methods.method import TOKEN, FineTune, Method, Training, plain_fine_tune, restore_entry, state_entry


def apply(model: nn.Module, keep_rate: float | Sequence[float] = 0.7,
          locations: Sequence[int] = token_schedule.DEFAULT_LOCATIONS, fuse_token: bool = True) -> nn.Module:
    """Make a timm VisionTransformer with a class token keep the top `keep_rate` of its non-class
    tokens by CLS attention at each of `locations` (fusing the rest when `fuse_token`), in place;
    returns it. Sets `model.vitprune_evit`. Re-applying changes the rates."""
    if not isinstance(model, VisionTransformer):
        raise UserError(f"EViT patches timm VisionTransformer models, got {type(model).__name__}")
    pruning_state.refuse_other_token_method(model, "EViT")
    if model.global_pool != "token" or model.num_prefix_tokens != 1:
        raise UserError(f"EViT ranks tokens by the class token's attention: it needs one class token and "
                        f"global_pool 'token', got {model.num_prefix_tokens} prefix tokens and "
                        f"global_pool {model.global_pool!r}")
    locs = vit_ops.check_locations(locations, len(model.blocks))
    rates = [float(keep_rate)] * len(locs) if isinstance(keep_rate, (int, float)) else [float(r) for r in keep_rate]
    if len(rates) != len(locs) or not all(0.0 < r <= 1.0 for r in rates):
        raise UserError(f"keep_rate must be one rate in (0, 1] or one per location ({len(locs)}), got {keep_rate!r}")
    vit_ops.check_blocks(model, "EViT")
    pruning_state.set_evit(model, {"keep_rate": rates, "locations": list(locs), "fuse_token": bool(fuse_token)})
    model.__class__ = vit_ops.mixed_class(_EViTMixin, type(model), "EViT", sys.modules[__name__])
    return model


RATE_STEP = 0.01  # the rates `rate_for_macs` tries: 0.01, 0.02, ..., 1


def rate_for_macs(model: nn.Module, target_macs: float, locations: Sequence[int] = token_schedule.DEFAULT_LOCATIONS,
                  fuse_token: bool = True) -> float:
    """The keep rate (a multiple of RATE_STEP, one for every location) whose MACs per image
    (`measure.count`, batch 1) come closest to `target_macs`. MACs grow with the rate, so a
    bisection over the rates finds it in about 7 counts. `model` is left as it was."""
    if isinstance(target_macs, bool) or not isinstance(target_macs, (int, float)) or target_macs <= 0:
        raise UserError(f"target_macs must be a positive number of MACs per image, got {target_macs!r}")
    steps, probe = round(1 / RATE_STEP), copy.deepcopy(model)
    cache: dict[int, int] = {}

    def macs(step: int) -> int:
        if step not in cache:
            cache[step] = int(measure.count(apply(probe, step * RATE_STEP, locations, fuse_token))["macs"])
        return cache[step]

    lo, hi = 1, steps  # the smallest rate whose MACs reach the target, then the closer of it and the one below
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if macs(mid) < target_macs else (lo, mid)
    best = min((s for s in (lo - 1, lo) if s >= 1), key=lambda s: abs(macs(s) - target_macs))
    return round(best * RATE_STEP, 6)


def apply_options(model: nn.Module, keep_rate: float | Sequence[float] | None = None,
                  locations: Sequence[int] = token_schedule.DEFAULT_LOCATIONS, fuse_token: bool = True,
                  target_macs: float | None = None) -> nn.Module:
    """`apply` at `keep_rate`, or at the rate whose MACs come closest to `target_macs` (`rate_for_macs`)."""
    if (keep_rate is None) == (target_macs is None):
        raise UserError("EViT takes a keep_rate or a target_macs, exactly one")
    if keep_rate is None:
        keep_rate = rate_for_macs(model, target_macs, locations, fuse_token)
    return apply(model, keep_rate, locations, fuse_token)


def config(model: nn.Module) -> dict[str, Any]:
    return vit_ops.required_config(pruning_state.evit(model), "EViT", "evit.apply(model, keep_rate)")


def _stages(model: nn.Module, num_patches: int | None = None) -> list[tuple[int, int]]:
    """Per location: (non-class tokens kept, non-class tokens after it, a fused token included)."""
    cfg = config(model)
    candidates = int(model.patch_embed.num_patches) if num_patches is None else int(num_patches)
    out = []
    for rate in cfg["keep_rate"]:
        kept = math.ceil(rate * candidates)
        if kept < candidates:
            candidates = kept + int(cfg["fuse_token"])
        out.append((kept, candidates))
    return out


def keep_counts(model: nn.Module, num_patches: int | None = None) -> list[int]:
    """Non-class tokens each location keeps (a fused token among the candidates, none added)."""
    return [kept for kept, _ in _stages(model, num_patches)]


def tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens entering each block, CLS and fused tokens INCLUDED, at the model's input size
    (inside a location's block the MLP already sees fewer)."""
    after = dict(zip(config(model)["locations"], (n for _, n in _stages(model))))
    current, out = int(model.patch_embed.num_patches), []
    for i in range(len(model.blocks)):
        out.append(1 + current)
        current = after.get(i, current)
    return out


def describe(model: nn.Module) -> dict[str, Any]:
    return {**config(model), "num_patches": int(model.patch_embed.num_patches), "keep_counts": keep_counts(model),
            "tokens_per_block": tokens_per_block(model), "tokens_include_cls": True}


def evit_features(model: nn.Module, images: torch.Tensor, record: bool = False):
    """The EViT forward: normed tokens after the last block. With `record`, also per location the
    original patch index of every token after it (-1: a fused token, which holds no one patch)."""
    cfg = config(model)
    x = vit_ops.embed(model, images)
    B = x.shape[0]
    rates = dict(zip(cfg["locations"], cfg["keep_rate"]))
    origin = torch.arange(x.shape[1] - 1, device=x.device).expand(B, -1)
    kept = []
    for i, blk in enumerate(model.blocks):
        if i not in rates:
            x = blk(x)
            continue
        ls1, ls2, dp1, dp2 = vit_ops.residual_scales(blk)
        a, cls_attn = vit_ops.attention_with_cls(blk.attn, blk.norm1(x))
        x = x + dp1(ls1(a))
        candidates = x.shape[1] - 1
        k = math.ceil(rates[i] * candidates)
        if k < candidates:
            idx = selection.top_k(cls_attn, k, step=selection.EXACT_STEP, low=0.0, high=1.0, in_order=True)
            tokens = x[:, 1:]
            parts = [x[:, :1], vit_ops.gather_tokens(tokens, idx)]
            origins = [origin.gather(1, idx)]
            if cfg["fuse_token"]:
                # EViT eq. 3: the inattentive tokens, weighted by their attention (the kept ones weigh 0)
                weights = cls_attn.scatter(1, idx, torch.zeros_like(idx, dtype=cls_attn.dtype))
                parts.append((tokens * weights.unsqueeze(-1)).sum(dim=1, keepdim=True))
                origins.append(origin.new_full((B, 1), -1))
            x, origin = torch.cat(parts, dim=1), torch.cat(origins, dim=1)
        if record:
            kept.append(origin.clone())
        x = x + dp2(ls2(blk.mlp(blk.norm2(x))))
    return (model.norm(x), kept) if record else model.norm(x)


@torch.no_grad()
def kept_token_masks(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and, per location, a bool mask [B, N] over the original patch grid of the patches
    that keep a token of their own (fused patches are not kept)."""
    return vit_ops.logits_and_kept_masks(model, images, evit_features)


class _EViTMixin:
    """Forward of an EViT VisionTransformer (same in train and eval mode)."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        vit_ops.refuse_attn_mask(attn_mask, is_causal, "EViT")
        return evit_features(self, x)


def _fine_tune(model: nn.Module, epochs: int, fresh: bool, backbone_lr_scale: float = 1.0) -> FineTune:
    """No parameters and no loss of its own: the recipe's plain fine-tune at the run's keep rate throughout."""
    cfg = config(model)
    return plain_fine_tune(model, backbone_lr_scale, f"EViT keeps {cfg['keep_rate']} of the tokens at blocks "
                                                     f"{cfg['locations']}{', fusing the rest' if cfg['fuse_token'] else ''}")


def _from_params(params: dict[str, Any]) -> dict[str, Any]:
    """A notebook's EViT: its base rate at every location, or the rate at `target_macs` (notebook 02's
    `match_macs_of`)."""
    where = list(params.get("locations") or token_schedule.DEFAULT_LOCATIONS)
    if params.get("target_macs") is not None:
        return {"target_macs": params["target_macs"], "locations": where}
    return {"keep_rate": float(params["base_rate"]), "locations": where}


def _row_label(params: dict[str, Any]) -> str:
    """"EViT ρ=0.7", or named by the row whose MACs it matches ("EViT at DynamicViT ρ=0.7's MACs")."""
    matched = params.get("matched_label")
    return f"EViT at {matched}'s MACs" if matched else f"EViT ρ={params['base_rate']:g}"


METHOD = Method(
    name="evit", label="EViT", marker="P", kind=TOKEN,
    apply=apply_options, state=state_entry("evit", pruning_state.evit), restore=restore_entry("evit", apply),
    describe=describe, tokens_per_block=tokens_per_block, kept_token_masks=kept_token_masks,
    from_params=_from_params, row_label=_row_label,
    training=Training(settings=("backbone_lr_scale",), plug=_fine_tune, plain=True))
"""EViT (Liang et al. 2022): CLS-attention top-k with the inattentive tokens fused into one."""
