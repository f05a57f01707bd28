"""Block pruning: remove whole attention heads and MLP hidden channels from timm ViTs.

The unit of pruning is a *block of weights* that can be cut out of a dense matrix
(Lagunas et al. 2021, "Block Pruning For Faster Transformers"; here the blocks are whole
heads and whole MLP rows/columns, the structured end of their method, which is also what
Wang et al. 2022 apply to DeiT). Three stages:

1. **Masks.** Every head gets a gate on its slice of the attention output (the input of
   `attn.proj`), every MLP hidden channel a gate on its slice of the input of `mlp.fc2`
   (Michel et al. 2019, "Are Sixteen Heads Really Better than One?", head masks ξ_h).
   Gates are forward hooks plus a buffer, so state-dict key names stay timm's and any code
   that calls `attn.proj` / `mlp.fc2` (e.g. DynamicViT's masked attention) is gated too.
   A block whose gates are all closed drops its whole branch (bias included): its output
   is zero and the residual carries the tokens through. The gates are `block_masks`.
2. **Importance and schedule.** Importance of a head (channel) is the first-order Taylor
   estimate of the loss change when its gate closes, |dL/dξ| = |Σ_{tokens, j ∈ unit} x_j
   ∂L/∂x_j| = |Σ_{i, j ∈ unit} W_ij ∂L/∂W_ij| over the columns of `proj` (`fc2`) that read
   the unit (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning";
   Michel et al. 2019). It is taken per batch and accumulated (exponential moving average
   while training, a sum for one-shot pruning). Without data the criterion is weight
   magnitude: the L2 norm of every weight coupled to the unit (qkv rows + proj columns for
   a head, fc1 row + fc2 column for a channel), as Torch-Pruning's magnitude importance
   groups coupled parameters. Units are ranked per layer, or globally with scores
   L2-normalised per layer first (Michel et al. 2019, sec. 4). Masks are tightened on the
   cubic schedule of Zhu & Gupta 2017 ("To prune, or not to prune"), driven from
   `engine.train(on_step=...)`; pruned units never come back.
3. **Removal.** Kept heads are cut out of the `qkv` rows and `proj` columns (`num_heads`
   and `attn_dim` updated, `head_dim` and `scale` unchanged, as timm 1.0's
   `Attention(attn_head_dim=...)` allows), kept channels out of `fc1` rows / `fc2`
   columns (and `mlp.norm` if present). A block with no head left gets `NoAttention`,
   one with no channel left `NoMlp`. The per-block spec `[{"heads": h, "mlp": m}, ...]` is
   stored as `model.vitprune_block_spec` (read it with `pruning_state.block_spec`); `apply_spec`
   rebuilds those shapes before a state dict is loaded. The cutting itself is `block_removal`.

MACs here are multiply-accumulates for one image (batch 1); tokens include CLS.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from timm.layers import Mlp
from timm.layers.attention import Attention
from torch import nn

from vitprune import measure, param_rules
from vitprune.errors import UserError
from vitprune.methods import dynamicvit, pruning_state
from vitprune.methods.block_importance import magnitude_importance, taylor_importance, taylor_scores_from_grads
from vitprune.methods.block_masks import (attach_masks, block_spec, detach_masks, get_masks, has_masks, num_channels,
                                          num_heads, set_masks, vit_blocks)
from vitprune.methods.block_removal import NoAttention, NoMlp, shrink_attention, shrink_mlp
from vitprune.methods.method import WIDTH, FineTune, Flag, Method, Training
from vitprune.torchutil import unwrap

IMPORTANCE = param_rules.CHOICES["importance"]
SCOPES = param_rules.CHOICES["scope"]


# --------------------------------------------------------------------------- ranking

def keep_count(fraction: float, n: int, minimum: int = 0) -> int:
    """Units kept out of `n` for a keep fraction: round half up, at least `minimum`
    (capped at n). E.g. 0.5 of 3 heads -> 2, 0.5 of 6 -> 3."""
    return min(n, max(int(math.floor(fraction * n + 0.5)), min(minimum, n)))


def _check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
        raise UserError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def select_units(scores: Sequence[torch.Tensor], keep: float, *, scope: str = "layer", minimum: int = 0,
                 active: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Boolean keep masks from per-layer importance scores.

    scope="layer": each layer keeps `keep_count(keep, n_l, minimum)` of its units.
    scope="global": `keep_count(keep, Σ n_l)` units over all layers, by score
    L2-normalised per layer (Michel et al. 2019), each layer keeping at least `minimum`.
    Units not in `active` are never selected (pruning is monotone); ties go to the lower
    index."""
    keep = _check_fraction("keep fraction", keep)
    if scope not in SCOPES:
        raise UserError(f"scope must be one of {SCOPES}, got {scope!r}")
    if minimum < 0:
        raise UserError(f"minimum units per layer must be >= 0, got {minimum}")
    active = [torch.ones(len(s), dtype=torch.bool) for s in scores] if active is None else [a.bool().cpu() for a in active]
    ranked = []
    for s, a in zip(scores, active):
        s = s.detach().float().cpu().clone()
        if scope == "global" and a.any():
            norm = s[a].norm()
            s = s / norm if norm > 0 else s
        s[~a] = -math.inf
        ranked.append(s)
    masks = [torch.zeros(len(s), dtype=torch.bool) for s in ranked]

    def take(i: int, k: int) -> None:
        order = torch.argsort(-ranked[i], stable=True)
        masks[i][order[:k]] = True

    if scope == "layer":
        for i, s in enumerate(ranked):
            take(i, min(keep_count(keep, len(s), minimum), int(active[i].sum())))
        return masks
    total = keep_count(keep, sum(len(s) for s in ranked))
    for i, s in enumerate(ranked):  # reserved minimum per layer
        take(i, min(minimum, int(active[i].sum())))
    left = total - sum(int(m.sum()) for m in masks)
    if left > 0:
        flat = torch.cat(ranked)
        free = ~torch.cat(masks) & torch.cat(active)
        order = torch.argsort(-flat, stable=True)  # ties: earlier layer, then lower index
        chosen = order[free[order]][:left]
        picked = torch.zeros(len(flat), dtype=torch.bool)
        picked[chosen] = True
        return [m | p for m, p in zip(masks, torch.split(picked, [len(s) for s in ranked]))]
    return masks


# --------------------------------------------------------------------------- schedule

def cubic_keep(step: int, total_steps: int, final_keep: float, start: float = 0.0, end: float = 0.7) -> float:
    """Keep fraction after `step` (0-based) of `total_steps`, Zhu & Gupta 2017 eq. 1:
    sparsity s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3 with s_i = 0, written in
    keep = 1 - sparsity. t counts completed steps (step + 1); t0 = start*total,
    t1 = end*total (fractions of training); constant final_keep after t1."""
    if not 0.0 <= start < end <= 1.0:
        raise UserError(f"schedule needs 0 <= start < end <= 1 (fractions of the training steps), got {start}, {end}")
    t = (step + 1) / max(total_steps, 1)
    p = min(max((t - start) / (end - start), 0.0), 1.0)
    return final_keep + (1.0 - final_keep) * (1.0 - p) ** 3


class GradualPruner:
    """`engine.train(on_step=pruner)` hook: tightens head/channel masks on a cubic schedule.

    Importance "taylor" is an exponential moving average (factor `ema`) of the per-step
    |Σ w·∂L/∂w| of the training loss (distillation included), read from `.grad` before
    the optimizer step; "magnitude" re-reads the weights each update. Masks change at
    most every `update_every` steps and always on the last step, so the model ends at the
    target. Call `remove(model)` after training for the dense model."""

    def __init__(self, model: nn.Module, keep_heads: float = 0.5, keep_mlp: float = 0.5, *,
                 importance: str = "taylor", scope: str = "layer", min_heads: int = 0, min_mlp: int = 0,
                 start: float = 0.0, end: float = 0.7, ema: float = 0.9, update_every: int = 1):
        if importance not in IMPORTANCE:
            raise UserError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
        if scope not in SCOPES:
            raise UserError(f"scope must be one of {SCOPES}, got {scope!r}")
        cubic_keep(0, 1, 1.0, start, end)  # validates start/end
        if not 0.0 <= ema < 1.0:
            raise UserError(f"ema must be in [0, 1), got {ema}")
        if update_every < 1:
            raise UserError(f"update_every must be >= 1, got {update_every}")
        self.keep_heads = _check_fraction("keep_heads", keep_heads)
        self.keep_mlp = _check_fraction("keep_mlp", keep_mlp)
        self.importance, self.scope = importance, scope
        self.min_heads, self.min_mlp = int(min_heads), int(min_mlp)
        self.start, self.end, self.ema, self.update_every = start, end, ema, update_every
        attach_masks(model)
        self.scores: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self.log: list[dict] = []  # one entry per mask change

    def _update_scores(self, model: nn.Module) -> None:
        if self.importance == "magnitude":
            self.scores = magnitude_importance(model)
            return
        h, c = taylor_scores_from_grads(model)
        if self.scores is None:
            self.scores = (h, c)
        else:
            a = self.ema
            self.scores = ([a * o + (1 - a) * n for o, n in zip(self.scores[0], h)],
                           [a * o + (1 - a) * n for o, n in zip(self.scores[1], c)])

    def fractions(self, step: int, total_steps: int) -> tuple[float, float]:
        return (cubic_keep(step, total_steps, self.keep_heads, self.start, self.end),
                cubic_keep(step, total_steps, self.keep_mlp, self.start, self.end))

    def __call__(self, step: int, total_steps: int, model: nn.Module) -> None:
        model = unwrap(model)
        self._update_scores(model)
        last = step + 1 >= total_steps
        if not last and (step + 1) % self.update_every:
            return
        fh, fm = self.fractions(step, total_steps)
        heads, chans = get_masks(model)
        new_h = select_units(self.scores[0], fh, scope=self.scope, minimum=self.min_heads, active=heads)
        new_c = select_units(self.scores[1], fm, scope=self.scope, minimum=self.min_mlp, active=chans)
        if any(not torch.equal(a, b) for a, b in zip(heads + chans, new_h + new_c)):
            set_masks(model, new_h, new_c)
            self.log.append({"step": step, "keep_heads": fh, "keep_mlp": fm,
                             "heads": int(sum(m.sum() for m in new_h)),
                             "mlp": int(sum(m.sum() for m in new_c))})


# --------------------------------------------------------------------------- removal

def _shrink(model: nn.Module, heads: Sequence[torch.Tensor], chans: Sequence[torch.Tensor]) -> nn.Module:
    blocks = vit_blocks(model)
    for blk, h, c in zip(blocks, heads, chans):
        if isinstance(blk.attn, Attention):
            blk.attn = shrink_attention(blk.attn, torch.nonzero(h.cpu()).flatten())
        if isinstance(blk.mlp, Mlp):
            blk.mlp = shrink_mlp(blk.mlp, torch.nonzero(c.cpu()).flatten())
        # a branch with nothing left ignores its input, so its pre-norm can never get a gradient: frozen,
        # or DDP (> 1 process) would wait for that gradient and fail the step
        for norm, branch in ((blk.norm1, blk.attn), (blk.norm2, blk.mlp)):
            if isinstance(branch, (NoAttention, NoMlp)):
                norm.requires_grad_(False)
    pruning_state.set_block_spec(model, block_spec(model))
    return model


def kept_units(model: nn.Module) -> list[dict]:
    """Indices of the heads and MLP channels the current masks keep, per block (lists of int),
    for plots and logs; call before `remove`."""
    heads, chans = get_masks(model)
    return [{"heads": torch.nonzero(h).flatten().tolist(), "mlp": torch.nonzero(c).flatten().tolist()}
            for h, c in zip(heads, chans)]


def remove(model: nn.Module) -> nn.Module:
    """Physically remove the masked heads and channels (in place): a dense smaller model
    whose outputs equal the masked model's. Sets `model.vitprune_block_spec`."""
    heads, chans = get_masks(model)
    detach_masks(model)
    return _shrink(model, heads, chans)


def apply_spec(model: nn.Module, spec: Sequence[dict]) -> nn.Module:
    """Rebuild the layer shapes of a pruned model from its spec (in place), so that a pruned
    state dict loads. Keeps the first h heads / m channels; the weights are meant to be
    overwritten by `load_state_dict`."""
    blocks = vit_blocks(model)
    if not isinstance(spec, (list, tuple)) or len(spec) != len(blocks):
        n = len(spec) if isinstance(spec, (list, tuple)) else type(spec).__name__
        raise UserError(f"block spec has {n} entries but the model has {len(blocks)} blocks; "
                        "use the spec saved with this model's checkpoint")
    heads, chans = [], []
    for i, (blk, s) in enumerate(zip(blocks, spec)):
        if not isinstance(s, dict) or set(s) != {"heads", "mlp"}:
            raise UserError(f"block spec entry {i} must be {{'heads': int, 'mlp': int}}, got {s!r}")
        nh, nm = num_heads(blk.attn), num_channels(blk.mlp)
        h, m = s["heads"], s["mlp"]
        for name, val, cur in (("heads", h, nh), ("mlp", m, nm)):
            if not isinstance(val, int) or isinstance(val, bool) or not 0 <= val <= cur:
                raise UserError(f"block spec entry {i}: {name}={val!r} must be an int in [0, {cur}] "
                                "(the block has that many); was the spec made for another model?")
        heads.append(torch.arange(nh) < h)
        chans.append(torch.arange(nm) < m)
    return _shrink(model, heads, chans)


# --------------------------------------------------------------------------- targets

def _tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens (CLS and other prefix tokens included) entering each block at batch 1."""
    model = unwrap(model)
    blocks = vit_blocks(model)
    if pruning_state.dynamicvit(model):
        return [int(n) for n in dynamicvit.tokens_per_block(model)]
    n = int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1))
    return [n] * len(blocks)


def block_macs(model: nn.Module) -> int:
    """MACs of the prunable part (qkv, attention matmuls, proj, fc1, fc2) per image."""
    total = 0
    dim = None
    for blk, n in zip(vit_blocks(model), _tokens_per_block(model)):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, Attention):
            dim, a = attn.qkv.in_features, attn.attn_dim
            total += n * dim * 3 * a + 2 * n * n * a + n * a * attn.proj.out_features
        if isinstance(mlp, Mlp):
            total += n * mlp.fc1.in_features * mlp.fc1.out_features + n * mlp.fc2.in_features * mlp.fc2.out_features
    return total


def keep_mlp_for_mac_ratio(model: nn.Module, target_mac_ratio: float, keep_heads: float,
                           total_macs: int | None = None, min_heads: int = 0, min_mlp: int = 0) -> float:
    """The largest MLP keep fraction f such that, with `keep_heads` of every block's heads kept,
    MACs(original) / MACs(pruned) >= target_mac_ratio (per-layer counts as `prune_to` keeps them).

    Heads come in few, large units (a vit_fmnist head costs as much as ~45 MLP channels), so
    one shared fraction overshoots the target; the head fraction is chosen by the user and the
    MLP width absorbs the rest. `total_macs`: MACs of the whole model as `measure.count`
    reports them (defaults to calling it); the non-prunable part (patch embedding, norms,
    head) is taken as fixed."""
    if not isinstance(target_mac_ratio, (int, float)) or target_mac_ratio < 1.0:
        raise UserError(f"target_mac_ratio is original/pruned MACs and must be >= 1, got {target_mac_ratio!r}")
    keep_heads = _check_fraction("keep_heads", keep_heads)
    if total_macs is None:
        bare = unwrap(model)
        total_macs = int(measure.count(bare, img_size=tuple(bare.patch_embed.img_size))["macs"])
    fixed = total_macs - block_macs(model)
    heads_macs, mlp_geo = 0, []
    for blk, n in zip(vit_blocks(model), _tokens_per_block(model)):
        attn, mlp = blk.attn, blk.mlp
        if isinstance(attn, Attention):  # per head: its q, k, v rows, q.k^T and attn.v, its proj columns
            per_head = attn.head_dim * (n * attn.qkv.in_features * 3 + 2 * n * n + n * attn.proj.out_features)
            heads_macs += keep_count(keep_heads, num_heads(attn), min_heads) * per_head
        per_chan = n * (mlp.fc1.in_features + mlp.fc2.out_features) if isinstance(mlp, Mlp) else 0
        mlp_geo.append((num_channels(mlp), per_chan))
    best = None
    for k in range(1001):
        f = k / 1000
        macs = fixed + heads_macs + sum(keep_count(f, m, min_mlp) * pc for m, pc in mlp_geo)
        if macs > 0 and total_macs / macs >= target_mac_ratio:
            best = f
    if best is None:
        raise UserError(f"target_mac_ratio {target_mac_ratio} is out of reach with keep_heads={keep_heads}: even "
                        f"removing every MLP channel allowed by min_mlp={min_mlp} leaves too many MACs; "
                        f"lower keep_heads (or min_heads / min_mlp)")
    return best


# --------------------------------------------------------------------------- one shot

def prune_to(model: nn.Module, keep_heads: float, keep_mlp: float, importance: str = "magnitude", data=None, *,
             scope: str = "layer", min_heads: int = 0, min_mlp: int = 0, max_batches: int | None = None,
             loss_fn=None) -> nn.Module:
    """One-shot: rank heads and channels, keep the given fractions, remove the rest (in place).

    importance="magnitude" needs no data; "taylor" needs `data` (batches or a Dataset of
    `(image, label)`). Returns the dense pruned model with `vitprune_block_spec` set."""
    keep_heads = _check_fraction("keep_heads", keep_heads)
    keep_mlp = _check_fraction("keep_mlp", keep_mlp)
    if importance not in IMPORTANCE:
        raise UserError(f"importance must be one of {IMPORTANCE}, got {importance!r}")
    if importance == "taylor":
        if data is None:
            raise UserError("importance='taylor' needs data (batches of images and labels); "
                            "pass data=... or use importance='magnitude'")
        scores = taylor_importance(model, data, loss_fn=loss_fn, max_batches=max_batches)
    else:
        scores = magnitude_importance(model)
    heads, chans = get_masks(model)
    new_h = select_units(scores[0], keep_heads, scope=scope, minimum=min_heads, active=heads)
    new_c = select_units(scores[1], keep_mlp, scope=scope, minimum=min_mlp, active=chans)
    detach_masks(model)
    return _shrink(model, new_h, new_c)


def widths_for_mac_ratio(model: nn.Module, target_mac_ratio: float, keep_heads: float,
                         total_macs: int | None = None, min_heads: int = 0,
                         min_mlp: int = 0) -> tuple[float, float]:
    """(keep_heads, keep_mlp) that land `target_mac_ratio`: the user's head fraction with the MLP
    width from `keep_mlp_for_mac_ratio`; only when that ratio is out of reach even with no MLP
    channel left, one head per block fewer at a time (vit_fmnist: 2 of 4 heads reach at most
    ~2.7x, so a 3x sweep point keeps 1 head and a wider MLP)."""
    heads = _check_fraction("keep_heads", keep_heads)
    most = max(num_heads(blk.attn) for blk in vit_blocks(model))
    while True:
        try:
            return heads, keep_mlp_for_mac_ratio(model, target_mac_ratio, heads, total_macs=total_macs,
                                                 min_heads=min_heads, min_mlp=min_mlp)
        except UserError:
            fewer = keep_count(heads, most, min_heads) - 1
            if fewer < max(min_heads, 0) or fewer < 0:
                raise
            heads = fewer / most


# --------------------------------------------------------------------------- the method's declaration

def _state(model: nn.Module) -> dict:
    spec = pruning_state.block_spec(model)
    return {"block_spec": [dict(s) for s in spec] if spec is not None else None,
            "block_masks": has_masks(model)}


def _restore(model: nn.Module, saved: dict) -> nn.Module:
    """Removed widths first (the layer shapes), then the gates of a not-yet-removed model."""
    if saved.get("block_spec") is not None:
        apply_spec(model, saved["block_spec"])
    if saved.get("block_masks"):
        attach_masks(model)
    return model


def _fine_tune(model: nn.Module, epochs: int, fresh: bool, *, keep_heads: float = 0.5, keep_mlp: float = 0.5,
               importance: str = "taylor", scope: str = "layer", min_heads: int = 0, min_mlp: int = 0,
               prune_start: float = 0.0, prune_end: float = 0.7, importance_ema: float = 0.9,
               update_every: int = 1) -> FineTune:
    """Gradual pruning while fine-tuning: a `GradualPruner` closes gates before the optimizer steps
    (cubic schedule from `prune_start` to `prune_end` of the steps, then recovery); the loss is the
    recipe's (cross-entropy and KL distillation from the teacher's logits). `remove` afterwards."""
    pruner = GradualPruner(model, keep_heads, keep_mlp, importance=importance, scope=scope, min_heads=min_heads,
                           min_mlp=min_mlp, start=prune_start, end=prune_end, ema=importance_ema,
                           update_every=update_every)
    return FineTune(on_step=pruner, teacher="logits",
                    summary=f"gates close from {100 * prune_start:.0f} % to {100 * prune_end:.0f} % of the steps "
                            f"to keep {keep_heads:.3g} of the heads and {keep_mlp:.3g} of the MLP channels "
                            f"({importance} importance, {scope} ranking)")


def _from_flags(values: dict) -> dict | None:
    if values.get("keep_heads") is None and values.get("keep_mlp") is None:
        return None
    options = {k: 1.0 if values.get(k) is None else values[k] for k in ("keep_heads", "keep_mlp")}
    for key, value in options.items():
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--{key.replace('_', '-')} must be a fraction in [0, 1], got {value}")
    return options


METHOD = Method(
    name="block", label="block pruning", marker="s", kind=WIDTH,
    apply=prune_to, state=_state, restore=_restore, describe=lambda model: {"block_spec": block_spec(model)},
    from_flags=_from_flags,
    flags=(Flag("--keep-heads", {"type": float, "help": "block pruning: fraction of attention heads kept "
                                                        "(weight magnitude ranks them)"}),
           Flag("--keep-mlp", {"type": float, "help": "block pruning: fraction of MLP hidden channels kept"})),
    parameters={"keep_heads": param_rules.FRACTION, "keep_mlp": param_rules.FRACTION,
                "target_mac_ratio": param_rules.off_or_at_least(1), "block_mac_ratio": param_rules.off_or_at_least(1)},
    training=Training(settings=("keep_heads", "keep_mlp", "importance", "scope", "min_heads", "min_mlp",
                                "prune_start", "prune_end", "importance_ema", "update_every"), plug=_fine_tune))
"""Structured pruning of attention heads and MLP channels (gradual, Taylor or magnitude importance)."""
