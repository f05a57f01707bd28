"""DynamicViT token pruning, patched in place onto any timm `VisionTransformer`.

Method: Rao et al., "DynamicViT: Efficient Vision Transformers with Dynamic Token
Sparsification", NeurIPS 2021 (arXiv:2106.02034); official code
github.com/raoyongming/DynamicViT (vit.py, losses.py, main_dynamic_vit.py). This file is our
own implementation of that method; comments cite where a formula comes from.

How it works
- `attach(model, base_rate, ...)` adds one score predictor before each pruning location
  (default blocks 3, 6, 9) as `model.score_predictor.<i>` -- the official checkpoint layout --
  and swaps the model's class for a subclass whose forward prunes tokens (the ToMe-style
  patch: parameters and timm key names are untouched, so state dicts stay compatible).
- Training mode (`model.train()`): the masked forward. Every token stays in the tensor; each
  predictor draws hard keep/drop decisions with Gumbel-softmax (straight-through), the
  decisions are cumulative (a dropped token never comes back) and attention is masked by the
  keep policy, so kept tokens never see dropped ones while gradients still reach the
  predictors.
- Eval mode: the gathered forward. Before each pruning location the top-k patch tokens by
  predicted keep score are gathered and the rest are removed, so compute really drops.
  Prefix tokens (CLS, and any register/distillation token) are always kept.

Units and conventions
- Keep ratios are cumulative fractions of the *patch* tokens of the input (CLS excluded):
  stage s keeps `keep_counts[s]` of the N patch tokens, counted from the original N, not from
  the previous stage. Counts are `floor(N * ratio)`, as the official `int(N * ratio)`, with the
  ratio first rounded to 12 decimals so binary noise cannot tip it (0.7 - 0.4 counts as 0.3).
- `tokens_per_block` counts the tokens entering each block *including* the prefix tokens.
- MACs are counted elsewhere (`vitprune.measure.count`, eval mode = gathered model).
- Official-layout checkpoint files: `vitprune.methods.dynamicvit_io`; the timm ViT pieces shared with
  `training_free` (checks, embedding, attention halves, masked attention): `vitprune.methods.vit_ops`;
  the keep schedule (ratios, counts, the recorded config): `vitprune.methods.token_schedule`; the
  training loss and the side outputs it reads: `vitprune.methods.dynamicvit_loss`.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.methods import pruning_state, selection
from vitprune.methods.dynamicvit_loss import TrainAux, make_loss_fn
from vitprune.methods.method import TOKEN, FineTune, Method, Training, restore_entry, state_entry
from vitprune.methods.method import backbone_parameters as method_backbone
from vitprune.methods.token_schedule import (DEFAULT_LOCATIONS, SCHEDULE_FLAGS, keep_counts, options_from_flags,
                                             options_from_params,
                                             recorded_keep_counts, schedule_config, schedule_ratios)
from vitprune.methods.vit_ops import (check_blocks, check_locations, embed, gather_tokens, masked_block, mixed_class,
                                      patch_masks, refuse_attn_mask, required_config, tokens_entering_blocks)
from vitprune.torchutil import unwrap

CONFIG_ATTR = pruning_state.DYNAMICVIT_ATTR  # where attach() records its config (read via pruning_state)
PREDICTOR_ATTR = "score_predictor"


# ---------------------------------------------------------------- the score predictor


class ScorePredictor(nn.Module):
    """Per-token keep/drop log-probabilities from local and global features.

    DynamicViT paper eq. (1)-(3), official `PredictorLG`: z = MLP(LayerNorm(x)); the first half
    of the channels is the token's local feature, the second half averaged over the currently
    kept tokens is the global feature; [local, global] -> MLP -> log-softmax over (keep, drop).
    Sub-module names match the official checkpoint (in_conv.0/1, out_conv.0/2/4).
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(embed_dim, embed_dim // 2), nn.GELU(),
            nn.Linear(embed_dim // 2, embed_dim // 4), nn.GELU(),
            nn.Linear(embed_dim // 4, 2), nn.LogSoftmax(dim=-1))
        for module in self.modules():  # official init: trunc_normal(0.02) weights, zero bias
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """tokens [B, N, C] (patch tokens only), policy [B, N, 1] (1 = kept) -> [B, N, 2] log-probs."""
        z = self.in_conv(tokens)
        half = z.shape[-1] // 2
        local = z[..., :half]
        return self.out_conv(torch.cat([local, _masked_mean(z[..., half:], policy).expand(-1, z.shape[1], -1)], dim=-1))

    def keep_logodds(self, tokens: torch.Tensor, policy: torch.Tensor | None = None) -> torch.Tensor:
        """log p(keep) - log p(drop) per token [B, N]: what top-k ranks (p(keep)'s order). The same
        function as `forward`, computed in fewer operations, which is what batch-1 latency pays for:
        the log-softmax cancels in the difference, so the last layer is one output (weight rows
        subtracted); the first out_conv layer is split into its local and global halves, so the
        global feature is projected once per image instead of copied to every token. `policy`
        None: every token counts in the global mean (the gathered forward)."""
        z = self.in_conv(tokens)
        half = z.shape[-1] // 2
        first, last = self.out_conv[0], self.out_conv[4]
        pooled = z[..., half:].mean(dim=1, keepdim=True) if policy is None else _masked_mean(z[..., half:], policy)
        h = F.linear(z[..., :half], first.weight[:, :half], first.bias) + F.linear(pooled, first.weight[:, half:])
        h = self.out_conv[3](self.out_conv[2](self.out_conv[1](h)))
        return F.linear(h, last.weight[:1] - last.weight[1:], last.bias[:1] - last.bias[1:])[..., 0]


def _masked_mean(z: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Mean over the kept tokens (policy 1) of z [B, N, D] -> [B, 1, D]; the clamp keeps an
    all-dropped row finite (0 instead of 0/0)."""
    return (z * policy).sum(dim=1, keepdim=True) / policy.sum(dim=1, keepdim=True).clamp_min(1e-6)


# ---------------------------------------------------------------- attach / describe


def attach(model: nn.Module, base_rate: float | None = 0.7, schedule: str = "geometric",
           keep_ratios: Sequence[float] | None = None,
           locations: Sequence[int] = DEFAULT_LOCATIONS,
           allow_empty_stage: bool = False) -> nn.Module:
    """Add DynamicViT token pruning to a timm VisionTransformer in place and return it.

    Re-attaching to a model that already has predictors at the same locations only changes the
    schedule (evaluate one trained model at another rate); other locations are an error.
    Sets `model.vitprune_dynamicvit` (the arguments, so a checkpoint can re-attach).
    """
    if not isinstance(model, VisionTransformer):
        raise UserError(f"token pruning patches timm VisionTransformer models, got {type(model).__name__}")
    depth = len(model.blocks)
    locs = check_locations(locations, depth)
    check_blocks(model, "token pruning")
    if model.global_pool not in ("token", "avg") or getattr(model, "attn_pool", None) is not None:
        raise UserError(f"token pruning supports global_pool 'token' or 'avg', not {model.global_pool!r}")
    if model.global_pool == "token" and model.num_prefix_tokens == 0:
        raise UserError("global_pool 'token' without a class token: nothing to classify from after pruning")
    num_patches = int(model.patch_embed.num_patches)
    # validates the schedule (and the empty-stage rule) before anything changes
    keep_counts(num_patches, base_rate, schedule, keep_ratios, locs, allow_empty_stage)
    pruning_state.refuse_other_token_method(model, "DynamicViT")
    existing = pruning_state.dynamicvit(model)
    if existing is not None and tuple(existing["locations"]) != locs:
        raise UserError(f"model already has token pruning at blocks {list(existing['locations'])}; "
                        f"re-attach with the same locations or start from an unpruned model")
    if existing is None:
        predictors = nn.ModuleList(ScorePredictor(model.embed_dim) for _ in locs)
        ref = next(model.parameters())
        model.add_module(PREDICTOR_ATTR, predictors.to(device=ref.device, dtype=ref.dtype))
        model.__class__ = _pruned_class(type(model))
    pruning_state.set_dynamicvit(model, schedule_config(base_rate, schedule, keep_ratios, locs, allow_empty_stage))
    model._tp_decision = getattr(model, "_tp_decision", "gumbel")
    model._tp_aux = None
    return model


def config(model: nn.Module) -> dict[str, Any]:
    """The attach arguments of a token-pruned model (UserError if it has none)."""
    return required_config(pruning_state.dynamicvit(model), "token pruning", "dynamicvit.attach(model, base_rate)")


def model_keep_counts(model: nn.Module, num_patches: int | None = None) -> list[int]:
    """Keep counts (patch tokens, CLS excluded) of an attached model for `num_patches` inputs."""
    model = unwrap(model)
    return recorded_keep_counts(model, config(model), num_patches)


def tokens_per_block(model: nn.Module) -> list[int]:
    """Tokens entering each block in eval mode, prefix tokens (CLS) INCLUDED, at the model's input size."""
    model = unwrap(model)
    cfg = pruning_state.dynamicvit(model)
    stage_at = {} if cfg is None else dict(zip(cfg["locations"], model_keep_counts(model)))
    return tokens_entering_blocks(model, stage_at)


def describe(model: nn.Module) -> dict[str, Any]:
    """Everything a metrics.json needs about the pruning: config, resolved ratios, counts, tokens."""
    model = unwrap(model)
    cfg = config(model)
    return {
        **cfg,
        "keep_ratios_resolved": schedule_ratios(cfg["base_rate"], cfg["schedule"], cfg["keep_ratios"],
                                                len(cfg["locations"])),
        "num_patches": int(model.patch_embed.num_patches),
        "keep_counts": model_keep_counts(model),
        "tokens_per_block": tokens_per_block(model),
        "tokens_include_cls": True,
        "predictor_params": sum(p.numel() for p in getattr(model, PREDICTOR_ATTR).parameters()),
    }


@torch.no_grad()
def init_keep_prior(model: nn.Module) -> None:
    """Set each predictor's output bias so that, before any training, it keeps its stage's
    share of the still-kept tokens (p_s = r_s / r_{s-1}) instead of 1/2.

    Not in the official code (which trains 30 ImageNet epochs from p = 1/2); for short
    fine-tunes it starts the Gumbel decisions at the target keep ratios, so the ratio loss
    has nothing to undo and the budget goes into choosing *which* tokens to keep.
    """
    bare = unwrap(model)
    cfg = config(bare)
    ratios = schedule_ratios(cfg["base_rate"], cfg["schedule"], cfg["keep_ratios"], len(cfg["locations"]))
    previous = 1.0
    for predictor, ratio in zip(getattr(bare, PREDICTOR_ATTR), ratios):
        p = min(max(ratio / previous if previous > 0 else 0.0, 1e-3), 1 - 1e-3)
        last = predictor.out_conv[4]
        last.bias.copy_(torch.tensor([math.log(p), math.log(1 - p)], dtype=last.bias.dtype))
        previous = max(ratio, 0.0)


DECISION_MODES = param_rules.CHOICES["backbone_decisions"]


def set_decision_mode(model: nn.Module, mode: str) -> None:
    """How the training-mode forward decides: 'gumbel' (as published: masked forward, Gumbel
    samples) or 'topk' (deterministic: the top-k tokens inference keeps, run as the gathered
    forward, so it costs what inference costs; no gradient to the predictors). 'topk' lets the
    backbone adapt to exactly the tokens inference will keep."""
    if mode not in DECISION_MODES:
        raise UserError(f"decision mode must be one of {', '.join(DECISION_MODES)}, got {mode!r}")
    config(model)
    unwrap(model)._tp_decision = mode


# ---------------------------------------------------------------- forwards


class _TokenPruningMixin:
    """Forward of a token-pruned VisionTransformer (mixed in front of the model's own class)."""

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        refuse_attn_mask(attn_mask, is_causal, "token-pruned")
        if self.training:
            if getattr(self, "_tp_decision", "gumbel") == "topk":
                feats, aux = _topk_train_features(self, x)
            else:
                feats, aux = _masked_features(self, x)
            self._tp_aux = aux
            # DDP finds the parameters a step uses by walking back from the forward's output; the
            # ratio loss reaches the predictors through `aux`, which the output may not (a stage whose
            # blocks all lost their heads: the mask then changes nothing downstream). A zero term
            # makes every decision part of the output, so DDP waits for the predictors' gradients.
            return feats + 0.0 * torch.stack([d.sum() for d in aux.decisions]).sum().to(feats.dtype)
        return _gathered_features(self, x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        aux = getattr(self, "_tp_aux", None)
        if self.training and aux is not None and not aux.gathered and self.global_pool == "avg":
            # masked forward keeps dropped tokens in the tensor: average only the kept ones
            prefix = self.num_prefix_tokens
            keep = aux.mask.unsqueeze(-1).to(x.dtype)
            pooled = (x[:, prefix:] * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            pooled = self.head_drop(self.fc_norm(pooled))
            return pooled if pre_logits else self.head(pooled)
        return super().forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, attn_mask=attn_mask, is_causal=is_causal))

def _pruned_class(base: type) -> type:
    return mixed_class(_TokenPruningMixin, base, "TokenPruned", sys.modules[__name__])


def _gathered_features(model: nn.Module, images: torch.Tensor, record: bool = False):
    """Eval-mode forward: drop tokens for real. Returns (normed tokens, kept original indices per stage)."""
    x = embed(model, images)
    prefix = model.num_prefix_tokens
    B = x.shape[0]
    n = x.shape[1] - prefix
    counts = dict(zip(config(model)["locations"], model_keep_counts(model, n)))
    predictors = getattr(model, PREDICTOR_ATTR)
    origin = torch.arange(n, device=x.device).expand(B, n) if record else None
    kept = []
    stage = 0
    for i, blk in enumerate(model.blocks):
        if i in counts:
            current = x.shape[1] - prefix
            k = min(counts[i], current)
            if k < current:
                patches = x[:, prefix:]
                score = predictors[stage].keep_logodds(patches)  # p(keep)'s order, unsaturated near p = 1
                # official eval: argsort descending, first k; here ranked on rounded keys so an
                # exported graph keeps the same tokens (`selection`)
                # kept tokens stay in their original order, so a later stage breaks ties by original
                # index, as the masked forward does (attention does not depend on the order)
                idx = selection.top_k(score, k, step=selection.STEP, low=selection.LOG_RANGE[0],
                                      high=selection.LOG_RANGE[1], in_order=True)
                patches = gather_tokens(patches, idx)
                x = torch.cat([x[:, :prefix], patches], dim=1)
                if record:
                    origin = origin.gather(1, idx)
            if record:
                kept.append(origin.clone())
            stage += 1
        x = blk(x)
    return model.norm(x), kept


def _topk_train_features(model: nn.Module, images: torch.Tensor):
    """Training-mode forward with deterministic top-k decisions: the gathered forward itself
    (the masked one gives the same logits, tested, at the cost of every token), with the side
    outputs the losses read laid out over the original N patch positions."""
    feats, kept = _gathered_features(model, images, record=True)
    prefix = model.num_prefix_tokens
    B, _, C = feats.shape
    n = _num_patches_of(model, images)
    decisions = [feats.new_zeros(B, n).scatter_(1, idx, 1.0) for idx in kept]
    tokens = feats.new_zeros(B, n, C).scatter(1, kept[-1].unsqueeze(-1).expand(-1, -1, C), feats[:, prefix:])
    aux = TrainAux(decisions=decisions, target_ratios=[c / n for c in model_keep_counts(model, n)], tokens=tokens,
                   mask=decisions[-1], num_prefix_tokens=prefix, gathered=True)
    return feats, aux


def _masked_features(model: nn.Module, images: torch.Tensor, topk: bool = False):
    """Training-mode forward: all tokens stay, hard decisions mask attention (DynamicViT sec. 3.2).
    Decisions are Gumbel samples, or with `topk` the tokens the gathered forward keeps (training
    with top-k runs `_topk_train_features` instead; this path is the reference it is tested against)."""
    x = embed(model, images)
    prefix = model.num_prefix_tokens
    B = x.shape[0]
    n = x.shape[1] - prefix
    cfg = config(model)
    counts = model_keep_counts(model, n)
    stage_of = {loc: s for s, loc in enumerate(cfg["locations"])}
    predictors = getattr(model, PREDICTOR_ATTR)
    prev = x.new_ones(B, n, 1)
    policy = None  # None until the first stage: blocks run unmasked (and fused)
    decisions = []
    for i, blk in enumerate(model.blocks):
        if i in stage_of:
            s = stage_of[i]
            if not topk:
                log_p = predictors[s](x[:, prefix:], prev)  # [B, N, 2]
                # official: gumbel_softmax(hard=True) on the log-probs, times the previous decision
                hard = F.gumbel_softmax(log_p, hard=True)[..., 0:1] * prev
            else:
                idx = selection.top_k(predictors[s].keep_logodds(x[:, prefix:], prev), counts[s], step=selection.STEP, low=selection.LOG_RANGE[0],
                                      high=selection.LOG_RANGE[1], exclude=prev[..., 0] <= 0)
                hard = torch.zeros_like(prev).scatter_(1, idx.unsqueeze(-1), 1.0) * prev
            decisions.append(hard[..., 0])
            prev = hard
            policy = torch.cat([x.new_ones(B, prefix, 1), hard], dim=1)
        x = blk(x) if policy is None else masked_block(blk, x, policy)
    x = model.norm(x)
    aux = TrainAux(decisions=decisions, target_ratios=[c / n for c in counts], tokens=x[:, prefix:],
                   mask=prev[..., 0].detach(), num_prefix_tokens=prefix)
    return x, aux


@torch.no_grad()
def kept_token_masks(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Eval-mode logits and, per stage, a bool mask [B, N] over the ORIGINAL patch grid of the
    tokens still kept after that stage (for the kept-token visualisation)."""
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    try:
        feats, kept = _gathered_features(bare, images, record=True)
        logits = bare.forward_head(feats)
    finally:
        bare.train(was_training)
    return logits, patch_masks(kept, _num_patches_of(bare, images))


def _num_patches_of(model: nn.Module, images: torch.Tensor) -> int:
    if getattr(model, "dynamic_img_size", False):
        grid = model.patch_embed.dynamic_feat_size(tuple(images.shape[-2:]))
    else:
        grid = model.patch_embed.grid_size
    return int(grid[0] * grid[1])


# ---------------------------------------------------------------- optimisation (the loss: dynamicvit_loss)


def predictor_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(getattr(unwrap(model), PREDICTOR_ATTR).parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable backbone parameters; cls_token and pos_embed stay frozen as in the official
    get_param_groups (main_dynamic_vit.py)."""
    return method_backbone(model, skip_prefix=PREDICTOR_ATTR + ".")


def param_groups(model: nn.Module, backbone_lr_scale: float = 0.01) -> list[dict]:
    """engine.train param groups: predictors at the full lr, the backbone at lr * backbone_lr_scale
    (official: backbone lr = min(0.01 * lr, cosine lr), i.e. a 0.01 scale)."""
    config(model)
    if backbone_lr_scale < 0:
        raise UserError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    groups = [{"params": predictor_parameters(model), "lr_scale": 1.0}]
    if backbone_lr_scale > 0:
        groups.append({"params": backbone_parameters(model), "lr_scale": float(backbone_lr_scale)})
    return groups


def frozen_backbone_hook(model: nn.Module, frozen_steps: int | None = None, then_decisions: str = "gumbel", *,
                         frozen_fraction: float | None = None) -> Callable:
    """An engine.train `on_step(step, total_steps, model)` that drops the backbone's gradients
    for the first `frozen_steps` optimizer steps (or the first `frozen_fraction` of the run's
    steps, as the loop counts them: on N processes the run has 1/N of the steps), so only the
    predictors learn at first (official: backbone lr 0 for the first 5 of 30 epochs; its
    decisions are Gumbel samples throughout).

    `then_decisions`: how tokens are dropped once the backbone trains. 'gumbel' is the official
    recipe; 'topk' trains the backbone on the deterministic top-k masks inference uses (as EViT,
    Liang et al. ICLR 2022, trains with its top-k selection) and freezes the predictors' choice.
    On tiny models with short fine-tunes the Gumbel masks stay noisy (each token is dropped at
    random with its predicted probability), and the backbone learns little that helps at
    inference."""
    if (frozen_steps is None) == (frozen_fraction is None):
        raise UserError("give one of frozen_steps and frozen_fraction")
    phase = frozen_steps if frozen_steps is not None else frozen_fraction
    if phase < 0:
        raise UserError(f"the frozen phase must be >= 0, got {phase}")
    if then_decisions not in DECISION_MODES:
        raise UserError(f"then_decisions must be one of {', '.join(DECISION_MODES)}, got {then_decisions!r}")
    if then_decisions == "topk" and not phase:
        raise UserError("top-k decisions give the predictors no gradient, so they learn only during the frozen "
                        "phase: set frozen_epochs > 0 (or use gumbel decisions)")
    params = backbone_parameters(model)
    set_decision_mode(model, "gumbel")

    def on_step(step: int, total_steps: int, model_: nn.Module) -> None:
        frozen = frozen_steps if frozen_steps is not None else int(round(frozen_fraction * total_steps))
        if step < frozen:
            for p in params:
                p.grad = None
        # from the next forward on (idempotent, so a resumed run lands in the right phase)
        set_decision_mode(model_, "gumbel" if step + 1 < frozen else then_decisions)

    # under top-k decisions the predictors get no gradient: with > 1 process DDP must expect that
    on_step.leaves_unused_parameters = then_decisions == "topk"
    return on_step


# ---------------------------------------------------------------- the method's fine-tune and declaration


def _init(model: nn.Module, keep_prior: bool = True, token_checkpoint: str = "") -> None:
    """Fresh predictors: at the target keep ratios (`keep_prior`), or the official weights of a
    released DynamicViT (`token_checkpoint`, official layout)."""
    if keep_prior:
        init_keep_prior(model)
    if token_checkpoint:
        from vitprune.methods import dynamicvit_io  # local: it imports this module

        dynamicvit_io.load_official_checkpoint(model, token_checkpoint)
        print("DynamicViT weights from", token_checkpoint)


def _fine_tune(model: nn.Module, epochs: int, fresh: bool, *, clf_weight: float = 1.0, ratio_weight: float = 2.0,
               distill_weight: float = 0.5, token_distill_weight: float | None = None, label_smoothing: float = 0.1,
               backbone_lr_scale: float = 0.01, frozen_epochs: float = 0.0,
               backbone_decisions: str = "gumbel") -> FineTune:
    """DynamicViT's fine-tune (the official main_dynamic_vit.py): its objective (`dynamicvit_loss`),
    the backbone at `backbone_lr_scale` of the predictors' lr, frozen for the first `frozen_epochs`,
    then trained on `backbone_decisions` masks. Trained predictors continued (not `fresh`) with top-k
    decisions and no frozen phase keep their choice while the backbone adapts (a combination's stage)."""
    loss_fn = make_loss_fn(clf_weight=clf_weight, ratio_weight=ratio_weight, distill_weight=distill_weight,
                           token_distill_weight=token_distill_weight, label_smoothing=label_smoothing)
    if backbone_decisions == "topk" and frozen_epochs == 0 and not fresh:
        set_decision_mode(model, "topk")
        for p in predictor_parameters(model):
            p.requires_grad_(False)
        on_step, summary = None, "the predictors keep their choice; the backbone trains on the tokens they keep"
    else:
        fraction = frozen_epochs / epochs if epochs else 0.0
        on_step = frozen_backbone_hook(model, then_decisions=backbone_decisions, frozen_fraction=fraction)
        summary = (f"the first {100 * fraction:.0f} % of the steps train the predictors alone (backbone frozen, "
                   f"Gumbel masks), the rest the backbone too on {backbone_decisions} masks")
    return FineTune(loss_fn=loss_fn, param_groups=param_groups(model, backbone_lr_scale), on_step=on_step,
                    teacher="tokens", summary=summary)


def _row_label(params: dict[str, Any]) -> str:
    schedule = params.get("schedule", "geometric")
    return f"DynamicViT ρ={params['base_rate']:g}" + ("" if schedule == "geometric" else f", {schedule} schedule")


METHOD = Method(
    name="dynamicvit", label="DynamicViT", marker="o", kind=TOKEN,
    apply=attach, state=state_entry("dynamicvit", pruning_state.dynamicvit),
    restore=restore_entry("dynamicvit", attach, "token_pruning"), describe=describe, tokens_per_block=tokens_per_block,
    kept_token_masks=kept_token_masks, flags=SCHEDULE_FLAGS, from_flags=options_from_flags,
    parameters={"base_rate": param_rules.RATE, "keep_ratios": param_rules.each(param_rules.FRACTION)},
    from_params=options_from_params, row_label=_row_label,
    training=Training(settings=("clf_weight", "ratio_weight", "distill_weight", "token_distill_weight",
                                "label_smoothing", "backbone_lr_scale", "frozen_epochs", "backbone_decisions"),
                      plug=_fine_tune, init=_init, init_settings=("keep_prior", "token_checkpoint")))
"""DynamicViT (Rao et al. 2021); checkpoints written before it had one name store it as "token_pruning"."""
