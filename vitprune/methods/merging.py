"""Token merging (ToMe): merge similar tokens instead of dropping them, with or without training.

Method: Bolya, Fu, Dai, Zhang, Feichtenhofer, Hoffman, "Token Merging: Your ViT but Faster",
ICLR 2023 (arXiv:2210.09461). Our own implementation, held to the official code's outputs:

- Where: inside every block, between the attention and the MLP branch (paper sec. 3, fig. 1),
  `r_i` tokens are merged away in block i, so the MLP of block i and everything after run on
  fewer tokens.
- Similarity: the attention keys averaged over heads (paper sec. 3, "Token similarity"), cosine
  similarity.
- Bipartite soft matching (paper sec. 3, "Bipartite Soft Matching"), as the official code
  (facebookresearch/ToMe, `tome/merge.py`) does it: set A holds the even positions of all
  tokens, the class token (position 0) among them, set B the odd ones; each A token gets one
  edge to its most similar B token; the r most similar edges merge their A token into its B
  token (several may merge into one); the other A tokens and all B tokens stay. The class token's
  edges rank last and no edge goes to a distillation token, so neither merges. r is clipped to
  half the patch tokens, so at least half survive each block. The merged tokens are ordered as
  the official code orders them (unmerged A tokens by position, then B), and the next block
  splits that order again.
- Merging is a size-weighted average, x_b <- (s_b x_b + sum s_a x_a) / (s_b + sum s_a), and the
  sizes add: s counts how many input patches a token holds.
- Proportional attention (paper eq. 1): softmax(q k^T / sqrt(d) + log s), so a merged token
  weighs as much as the patches it holds.
- Rankings use `selection.top_k` on the similarities' float values (`selection.EXACT_STEP`):
  the official order, exact ties to the lower position. `tests/fixtures/official/tome.pt` holds
  the official code's logits on fixed weights and images (made by tools/official_fixtures.py);
  ours equal them (max |Δ logit| checked at <= 1e-4, measured <= 2.1e-6; the same logits on 1,000
  fmnist test images).
- A block whose heads were all pruned (`block_pruning.NoAttention`) has no keys: its normed
  input tokens are the similarity features instead.

Schedules: `apply(model, r)` with one int (the paper's constant r per block) or one value per
block; `schedule_for_macs` finds the schedule whose MACs (`measure.count`, traced at batch 1
with the merged shapes) come closest to a target, for comparisons at matched MACs.

No parameter is added: the state dict is the baseline's. The model is patched in place by a
class swap, as `dynamicvit` does. Tokens per block count CLS. Used as the paper first does,
nothing trained (notebook 04's comparator), or fine-tuned through the same merges (notebook 02,
`method: merging`, with the plain recipe of `method.plain_fine_tune`), as the paper also trains
with ToMe in the forward pass: the gradients flow through the size-weighted averages.
Proportional attention stays on while training, as the official timm patch has it (its MAE
patch turns it off for average-pooled models).
"""

from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import pruning_state, selection, vit_ops
from vitprune.methods.method import (TOKEN, FineTune, Flag, Method, Training, comma_list, plain_fine_tune,
                                     restore_entry, state_entry)

CONFIG_ATTR = pruning_state.MERGING_ATTR  # where apply() records its config (read via pruning_state)


# ---------------------------------------------------------------- schedule


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, VisionTransformer):
        raise UserError(f"token merging patches timm VisionTransformer models, got {type(model).__name__}")
    pruning_state.refuse_other_token_method(model, "ToMe merging")
    if model.global_pool != "token" or model.num_prefix_tokens < 1:
        raise UserError(f"token merging here classifies from the class token: it needs global_pool 'token', "
                        f"got {model.global_pool!r}")
    if getattr(model, "num_reg_tokens", 0) or model.num_prefix_tokens > 2:
        raise UserError(f"ToMe's matching protects a class token and a distillation token only; this model has "
                        f"{model.num_prefix_tokens} prefix tokens (register tokens are not supported)")
    vit_ops.check_blocks(model, "token merging")


def _schedule(model: nn.Module, r: int | Sequence[int]) -> list[int]:
    depth = len(model.blocks)
    values = [r] * depth if isinstance(r, int) and not isinstance(r, bool) else list(r) if isinstance(
        r, (list, tuple)) else None
    if values is None or len(values) != depth:
        raise UserError(f"merge schedule r must be one int or {depth} ints (one per block), got {r!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise UserError(f"merge schedule entry {i} must be an int >= 0 (tokens merged in that block), got {v!r}")
    return [int(v) for v in values]


def apply(model: nn.Module, r: int | Sequence[int] = 8) -> nn.Module:
    """Make a timm VisionTransformer merge `r` tokens per block (an int, or one int per block),
    in place; returns it. Re-applying changes the schedule. Sets `model.vitprune_merging`."""
    _check_model(model)
    setattr(model, CONFIG_ATTR, {"r": _schedule(model, r)})
    model.__class__ = vit_ops.mixed_class(_MergingMixin, type(model), "TokenMerging", sys.modules[__name__])
    return model


def config(model: nn.Module) -> dict[str, Any]:
    return vit_ops.required_config(getattr(model, CONFIG_ATTR, None), "token merging", "merging.apply(model, r)")


def merge_counts(model: nn.Module, num_patches: int | None = None) -> list[int]:
    """Tokens actually merged in each block: the schedule clipped to half the patch tokens left."""
    n = int(model.patch_embed.num_patches) if num_patches is None else int(num_patches)
    out = []
    for r in config(model)["r"]:
        r = min(r, n // 2)
        out.append(r)
        n -= r
    return out


def tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens entering each block, prefix tokens (CLS) INCLUDED, at the model's input size.
    (Inside block i the MLP already sees tokens_per_block[i] - merge_counts[i].)"""
    prefix = int(model.num_prefix_tokens)
    n = int(model.patch_embed.num_patches)
    out = []
    for r in merge_counts(model):
        out.append(prefix + n)
        n -= r
    return out


def describe(model: nn.Module) -> dict[str, Any]:
    """Schedule, effective merges and tokens per block, for metrics.json."""
    return {"r": list(config(model)["r"]), "merge_counts": merge_counts(model),
            "tokens_per_block": tokens_per_block(model), "tokens_include_cls": True,
            "num_patches": int(model.patch_embed.num_patches)}


def spread_schedule(model: nn.Module, total: int) -> list[int]:
    """`total` merges spread over the blocks as evenly as possible, earlier blocks first
    (total = 12 r on a 12-block model is the paper's constant r)."""
    depth = len(model.blocks)
    return [total // depth + (1 if i < total % depth else 0) for i in range(depth)]


def schedule_for_macs(model: nn.Module, target_macs: int | None = None, *,
                      mac_ratio: float | None = None) -> dict[str, Any]:
    """The spread schedule whose MACs per image come closest to `target_macs` (or to the
    unmerged model's MACs / `mac_ratio`). MACs fall monotonically with the number of merges,
    so a search over it finds the count in a few `measure.count`s (batch 1; interpolated, the same
    answer a bisection gives).
    The model is left with its previous merge config (or none). Returns {"r", "macs",
    "target_macs", "base_macs"}."""
    if (target_macs is None) == (mac_ratio is None):
        raise UserError("give exactly one of target_macs or mac_ratio (original / merged MACs, e.g. 1.5)")
    _check_model(model)
    had = getattr(model, CONFIG_ATTR, None)
    base_model = model

    def macs_for(schedule: list[int]) -> int:
        apply(base_model, schedule)
        return int(measure.count(base_model)["macs"])

    try:
        base = macs_for([0] * len(model.blocks))
        if mac_ratio is not None:
            if isinstance(mac_ratio, bool) or not isinstance(mac_ratio, (int, float)) or mac_ratio < 1:
                raise UserError(f"mac_ratio is original / merged MACs and must be >= 1, got {mac_ratio!r}")
            target = base / float(mac_ratio)
        else:
            if isinstance(target_macs, bool) or not isinstance(target_macs, (int, float)) or target_macs <= 0:
                raise UserError(f"target_macs must be a positive number of MACs per image, got {target_macs!r}")
            target = float(target_macs)
        lo, hi = 0, len(model.blocks) * (int(model.patch_embed.num_patches) // 2)
        floor_macs = macs_for(spread_schedule(model, hi))
        if target < floor_macs:
            raise UserError(f"target {target:.4g} MACs is below what merging can reach ({floor_macs:.4g} MACs with "
                            f"half the tokens merged in every block); ask for fewer MACs saved")
        # smallest number of merges whose MACs are <= target (every count below lo is above it, hi's is
        # not); each probe interpolates between the nearest counts known on either side (MACs fall
        # almost linearly with the merges), so a few counts find what a bisection finds in ~log2(hi)
        cache = {0: base, hi: floor_macs}
        while lo < hi:
            left = max(lo - 1, 0)
            fall = cache[left] - cache[hi]
            step = math.ceil((cache[left] - target) / fall * (hi - left)) if fall > 0 else 1
            mid = min(max(left + step, lo), hi - 1) if hi - lo > 1 else lo
            cache.setdefault(mid, macs_for(spread_schedule(model, mid)))
            if cache[mid] <= target:
                hi = mid
            else:
                lo = mid + 1
        best = lo
        if lo > 0:
            cache.setdefault(lo - 1, macs_for(spread_schedule(model, lo - 1)))
            if abs(cache[lo - 1] - target) < abs(cache[lo] - target):
                best = lo - 1
        schedule = spread_schedule(model, best)
        return {"r": schedule, "macs": cache[best], "target_macs": target, "base_macs": base}
    finally:
        if had is None:
            _remove(base_model)
        else:
            setattr(base_model, CONFIG_ATTR, had)


def _remove(model: nn.Module) -> None:
    """Undo `apply`: the class before the swap, no config."""
    if getattr(model, CONFIG_ATTR, None) is not None:
        delattr(model, CONFIG_ATTR)
    cls = type(model)
    if issubclass(cls, _MergingMixin):
        model.__class__ = next(b for b in cls.__mro__[1:] if not issubclass(b, _MergingMixin))


# ---------------------------------------------------------------- forward


def _attention(attn: nn.Module, x: torch.Tensor, size: torch.Tensor | None):
    """timm Attention with proportional attention (ToMe eq. 1: + log s on the logits of each
    key). Returns (output [B, T, C], similarity features: keys averaged over heads [B, T, d])."""
    if getattr(attn, "num_heads", None) == 0:  # NoAttention: no keys; the normed tokens instead
        return attn(x), x
    B, T, _ = x.shape
    q, k, v, gate = vit_ops.attention_qkv(attn, x)
    bias = None if size is None else size.log().view(B, 1, 1, T).to(q.dtype)
    if getattr(attn, "fused_attn", False):
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.transpose(1, 2).reshape(B, T, attn.num_heads * attn.head_dim)
        out = getattr(attn, "norm", vit_ops.identity)(out)
        if gate is not None:
            out = out * gate
        out = attn.proj_drop(attn.proj(out))
    else:
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        out = vit_ops.attention_output(attn, logits.softmax(dim=-1), v, gate)
    return out, k.mean(dim=1)


def bipartite_merge(x: torch.Tensor, size: torch.Tensor, metric: torch.Tensor, r: int,
                    prefix: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge r tokens of x [B, T, C] (sizes [B, T, 1], similarity features metric [B, T, d]) by
    bipartite soft matching as the official code does (facebookresearch/ToMe, `tome/merge.py`):
    set A holds the even positions of *all* tokens (the class token, at 0, among them) and set B
    the odd ones; each A token's edge goes to its most similar B token; the r most similar edges
    merge their A token into its B token. The class token never merges (its edges rank last), nor
    does a distillation token at position 1 (no A token picks it). The result is ordered as the
    official code orders it: the unmerged A tokens by position, then every B token (a distillation
    token back at position 1), so the next block's A/B split runs over that order.

    Returns the merged tokens [B, T - r, C], their sizes, and for each of them the position (in
    x) of the token it continues (a merged-away token has none): what `kept_token_masks` follows.
    `prefix` is 1 (class token) or 2 (class and distillation tokens)."""
    B, T, C = x.shape
    if r <= 0:
        return x, size, torch.arange(T, device=x.device).expand(B, T)
    with torch.no_grad():  # which tokens merge is a discrete choice: no gradient through it
        feats = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        similarity = feats[:, 0::2] @ feats[:, 1::2].transpose(-1, -2)  # [B, |A|, |B|] cosine
        na, nb = similarity.shape[1:]
        # each A token's most similar B token, then the A tokens by that similarity; both ranked on
        # integer keys of the float values (lower index first on exact ties, as the official sort)
        cosine = dict(step=selection.EXACT_STEP, low=selection.COSINE_RANGE[0], high=selection.COSINE_RANGE[1])
        no_distill = (torch.arange(nb, device=x.device) == 0).expand_as(similarity) if prefix > 1 else None
        partner = selection.top_k(similarity, 1, exclude=no_distill, **cosine)[..., 0]  # never the distillation token
        best = similarity.gather(-1, partner.unsqueeze(-1))[..., 0]
        no_cls = (torch.arange(na, device=x.device) == 0).expand_as(best)  # A's first: the class token
        order = selection.top_k(best, r, full=True, exclude=no_cls, **cosine)
        src = order[:, :r]  # the A tokens merged away (most similar edges)
        stay = order[:, r:].topk(na - r, dim=-1, largest=False).values  # the others, by position
        dst = partner.gather(1, src)  # where each merged A token goes
    # size-weighted average (official `merge_wavg`): every token is (sum of s * x) / (sum of s)
    # over the tokens it now holds
    weighted = x * size
    wa, wb = weighted[:, 0::2], weighted[:, 1::2]
    sa, sb = size[:, 0::2], size[:, 1::2]
    wb = wb.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, C), wa.gather(1, src.unsqueeze(-1).expand(-1, -1, C)))
    sb = sb.scatter_add(1, dst.unsqueeze(-1), sa.gather(1, src.unsqueeze(-1)))
    wa, sa = wa.gather(1, stay.unsqueeze(-1).expand(-1, -1, C)), sa.gather(1, stay.unsqueeze(-1))
    came_from = [2 * stay, 2 * torch.arange(nb, device=x.device).expand(B, nb) + 1]
    if prefix > 1:  # class token, distillation token, then the rest of A and of B
        parts = [(wa[:, :1], sa[:, :1], came_from[0][:, :1]), (wb[:, :1], sb[:, :1], came_from[1][:, :1]),
                 (wa[:, 1:], sa[:, 1:], came_from[0][:, 1:]), (wb[:, 1:], sb[:, 1:], came_from[1][:, 1:])]
    else:
        parts = [(wa, sa, came_from[0]), (wb, sb, came_from[1])]
    weighted, size, continues = (torch.cat(p, dim=1) for p in zip(*parts))
    return weighted / size, size, continues


def merged_features(model: nn.Module, images: torch.Tensor, record: bool = False):
    """The merging forward: normed tokens after the last block [B, T_last, C]. Blocks before the
    first merge run timm's own forward (so r = 0 everywhere is the unmodified model exactly).
    With `record`, also the original patch index each patch token continues, after every merging block."""
    x = vit_ops.embed(model, images)
    prefix = model.num_prefix_tokens
    counts = merge_counts(model, x.shape[1] - prefix)
    # per token, the original patch it continues (prefix tokens stay first: their entries are never read)
    origin = (torch.arange(x.shape[1], device=x.device) - prefix).clamp_min(0).expand(x.shape[0], -1)
    kept = []
    size = None  # all ones until the first merge
    for blk, r in zip(model.blocks, counts):
        if size is None and r == 0:
            x = blk(x)
            continue
        ls1, ls2, dp1, dp2 = vit_ops.residual_scales(blk)
        a, metric = _attention(blk.attn, blk.norm1(x), size)
        x = x + dp1(ls1(a))
        if r > 0:
            if size is None:
                size = x.new_ones(x.shape[0], x.shape[1], 1)
            x, size, continues = bipartite_merge(x, size, metric, r, prefix)
            origin = origin.gather(1, continues)
            if record:
                kept.append(origin[:, prefix:].clone())
        x = x + dp2(ls2(blk.mlp(blk.norm2(x))))
    return (model.norm(x), kept) if record else model.norm(x)


@torch.no_grad()
def kept_token_masks(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and, after each block that merges, a bool mask [B, N] over the original patch grid of
    the patches whose own token still exists (the others were merged into one of them)."""
    return vit_ops.logits_and_kept_masks(model, images, merged_features)


class _MergingMixin:
    """Forward of a token-merging VisionTransformer (same in train and eval mode)."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        vit_ops.refuse_attn_mask(attn_mask, is_causal, "token-merging")
        return merged_features(self, x)



def apply_options(model: nn.Module, r: int | Sequence[int] | None = None, mac_ratio: float | None = None,
                  target_macs: int | None = None) -> nn.Module:
    """`apply` with `r` given, or with the spread schedule closest to the unmerged MACs / `mac_ratio`
    (or to `target_macs` per image)."""
    if r is None:
        r = schedule_for_macs(model, target_macs=target_macs, mac_ratio=mac_ratio)["r"]
    return apply(model, r)


def _from_params(params: dict[str, Any]) -> dict[str, Any]:
    """A notebook's ToMe: the spread schedule at the MACs of the row it is matched to (`target_macs`:
    notebook 04 gives the MACs of the rate's first comparator, notebook 02 those of `match_macs_of`)."""
    if params.get("control"):
        return {"r": 0}  # notebook 02's control: the same fine-tune, nothing merged
    if params.get("target_macs") is None:
        raise UserError("ToMe merging has no keep rate: match it to another method's MACs (notebook 02: "
                        "match_macs_of: dynamicvit; notebook 04: list it after a comparator that has a rate, "
                        "e.g. training_free)")
    return {"target_macs": params["target_macs"]}


def _row_label(params: dict[str, Any]) -> str:
    """Named by the row whose MACs it matches (`matched_label`, e.g. "DynamicViT ρ=0.7"), else its rate."""
    matched = params.get("matched_label") or f"ρ={params['base_rate']:g}"
    return f"ToMe at {matched}'s MACs"


def _fine_tune(model: nn.Module, epochs: int, fresh: bool, backbone_lr_scale: float = 1.0) -> FineTune:
    """No parameters and no loss of its own: the recipe's plain fine-tune through the merged forward."""
    return plain_fine_tune(model, backbone_lr_scale, f"ToMe merges {merge_counts(model)} tokens in the blocks")


def _from_flags(values: dict[str, Any]) -> dict[str, Any] | None:
    r, mac_ratio = values.get("merge_r"), values.get("merge_mac_ratio")
    if r is None and mac_ratio is None:
        return None
    if r is not None and mac_ratio is not None:
        raise UserError("give --merge-r or --merge-mac-ratio, not both")
    if r is None:
        return {"mac_ratio": mac_ratio}
    r = comma_list(r, "--merge-r", int, "ints like 8 or 8,8,4")
    return {"r": r[0] if len(r) == 1 else r}


METHOD = Method(
    name="merging", label="ToMe merging", marker="^", kind=TOKEN,
    apply=apply_options, state=state_entry("merging", pruning_state.merging),
    restore=restore_entry("merging", apply), describe=describe, tokens_per_block=tokens_per_block,
    kept_token_masks=kept_token_masks, from_flags=_from_flags,
    flags=(Flag("--merge-r", {"help": "ToMe token merging: tokens merged per block, one int or one per block "
                                      "(comma-separated)"}),
           Flag("--merge-mac-ratio", {"type": float, "help": "ToMe token merging with the schedule whose MACs come "
                                                             "closest to the unmerged model's / F"})),
    from_params=_from_params, row_label=_row_label,
    training=Training(settings=("backbone_lr_scale",), plug=_fine_tune, plain=True), training_free=True)
"""ToMe (Bolya et al. 2023): bipartite soft matching, size-weighted merges, proportional attention."""
