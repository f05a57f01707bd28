"""timm VisionTransformer pieces the token pruners share (DynamicViT in `dynamicvit`, the
CLS-attention top-k in `training_free`, EViT in `evit`, ToMe in `merging`): argument checks (blocks, locations,
a recorded config, no attention mask), the token embedding, timm Attention split into its q/k/v
and output halves, DynamicViT's masked attention, token counts per block, the ToMe-style class
patch and the kept-token masks.

Units: token counts include the prefix tokens (CLS); keep counts are patch tokens only.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn as nn

from vitprune.errors import UserError


# ---------------------------------------------------------------- checks


def check_locations(locations: Iterable[int], depth: int | None = None) -> tuple[int, ...]:
    try:
        locs = tuple(int(v) for v in locations)
    except (TypeError, ValueError):
        raise UserError(f"locations must be block indices like 3,6,9, got {locations!r}") from None
    if not locs:
        raise UserError("token pruning needs at least one pruning location; pass e.g. locations=(3, 6, 9)")
    if list(locs) != sorted(set(locs)) or locs[0] < 0:
        raise UserError(f"locations must be distinct increasing block indices >= 0, got {list(locs)}")
    if depth is not None and locs[-1] >= depth:
        raise UserError(f"pruning location {locs[-1]} is beyond the model's {depth} blocks "
                        f"(valid: 0..{depth - 1})")
    return locs


def check_blocks(model: nn.Module, what: str) -> None:
    """Every block is timm's pre-norm Block (norm1/attn/norm2/mlp) with a fused-qkv attention."""
    for i, blk in enumerate(model.blocks):
        missing = [name for name in ("norm1", "attn", "norm2", "mlp") if not hasattr(blk, name)]
        if missing:
            raise UserError(f"block {i} ({type(blk).__name__}) has no {missing}; {what} supports "
                            f"timm's pre-norm Block (norm1/attn/norm2/mlp)")
        check_attention(blk.attn, i)


def check_attention(attn: nn.Module, index: int) -> None:
    """timm's fused-qkv Attention geometry (num_heads, head_dim, qkv, proj, scale) or a NoAttention."""
    if getattr(attn, "num_heads", None) == 0:  # block_pruning.NoAttention: branch is zero
        return
    missing = [name for name in ("num_heads", "head_dim", "qkv", "proj", "scale") if not hasattr(attn, name)]
    if missing:
        raise UserError(f"block {index} attention ({type(attn).__name__}) lacks {missing}; token pruning needs "
                        f"timm's fused-qkv Attention (or block_pruning.NoAttention)")


def required_config(cfg: dict | None, what: str, call: str) -> dict:
    """A patched model's recorded config `cfg` (as pruning_state reads it), or a UserError when
    the model has none, naming the `call` that patches one in."""
    if cfg is None:
        raise UserError(f"this model has no {what}; call {call} first")
    return cfg


# ---------------------------------------------------------------- forwards


def embed(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering block 0, exactly as timm's forward_features builds them."""
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def refuse_attn_mask(attn_mask, is_causal: bool, what: str) -> None:
    """A patched `forward_features` keeps timm's signature but takes no attention mask."""
    if attn_mask is not None or is_causal:
        raise UserError(f"a {what} model takes no attn_mask / is_causal")


def masked_block(blk: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """One timm pre-norm Block with attention masked by `policy` [B, T, 1]."""
    ls1 = getattr(blk, "ls1", identity)
    ls2 = getattr(blk, "ls2", identity)
    dp1 = getattr(blk, "drop_path1", identity)
    dp2 = getattr(blk, "drop_path2", identity)
    x = x + dp1(ls1(masked_attention(blk.attn, blk.norm1(x), policy)))
    return x + dp2(ls2(blk.mlp(blk.norm2(x))))


def masked_attention(attn: nn.Module, x: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """timm Attention on x [B, T, C] where key j is visible only if policy[b, j] = 1 or j is the query.

    Official `softmax_with_policy` (DynamicViT vit.py / paper eq. 6): weights exp(a_ij) * G_ij with
    G_ij = policy_j off the diagonal and 1 on it, normalised as (w + eps/T) / (sum w + eps). A
    multiplicative mask, unlike -inf masking, lets gradients reach the predictors through the
    Gumbel straight-through policy. Ours subtracts the row max over *visible* keys only (the
    official subtracts the max over all keys), so a visible weight is 1 and eps stays negligible.
    Geometry is read from the module (num_heads, head_dim, scale), so pruned heads work;
    an attention with num_heads == 0 contributes zero.
    """
    if getattr(attn, "num_heads", None) == 0:
        return torch.zeros_like(x)
    B, T, _ = x.shape
    q, k, v, gate = attention_qkv(attn, x)
    logits = (q * attn.scale) @ k.transpose(-2, -1)  # [B, H, T, T]
    keep = policy.reshape(B, 1, 1, T).to(torch.float32)
    eye = torch.eye(T, dtype=torch.float32, device=x.device).view(1, 1, T, T)
    visible = keep + (1.0 - keep) * eye
    with torch.no_grad():
        row_max = logits.float().masked_fill(visible <= 0, float("-inf")).amax(dim=-1, keepdim=True)
    weights = torch.exp(logits.float() - row_max) * visible
    weights = (weights + eps / T) / (weights.sum(dim=-1, keepdim=True) + eps)
    return attention_output(attn, weights.to(v.dtype), v, gate)


def attention_qkv(attn: nn.Module, x: torch.Tensor):
    """timm Attention's q, k, v [B, H, T, head_dim] (after its q/k norms) and its optional output
    gate, with the geometry read from the module (so pruned heads work)."""
    B, T, _ = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(x).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    return getattr(attn, "q_norm", identity)(q), getattr(attn, "k_norm", identity)(k), v, gate


def attention_output(attn: nn.Module, weights: torch.Tensor, v: torch.Tensor, gate: torch.Tensor | None):
    """The rest of timm Attention's forward from attention weights [B, H, T, T]: dropout,
    weights @ v, merged heads, its norm and gate, proj."""
    B, H, T, head_dim = v.shape
    out = (attn.attn_drop(weights) @ v).transpose(1, 2).reshape(B, T, H * head_dim)
    out = getattr(attn, "norm", identity)(out)
    if gate is not None:
        out = out * gate
    return attn.proj_drop(attn.proj(out))



def attention_with_cls(attn: nn.Module, x: torch.Tensor, prefix: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """timm Attention (non-fused path) on x [B, T, C], also returning the class token's attention
    on the tokens after the `prefix` ones, averaged over heads [B, T - prefix] (EViT eq. 2: the
    attentiveness of token j). Geometry is read from the module (works on pruned heads)."""
    q, k, v, gate = attention_qkv(attn, x)
    weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # [B, H, T, T]
    return attention_output(attn, weights, v, gate), weights[:, :, 0, prefix:].mean(dim=1)


def residual_scales(blk: nn.Module) -> tuple[Callable, Callable, Callable, Callable]:
    """A timm Block's (ls1, ls2, drop_path1, drop_path2), identity where the block has none: what a
    forward that splits the block between its attention and MLP branches applies to each."""
    return tuple(getattr(blk, name, identity) for name in ("ls1", "ls2", "drop_path1", "drop_path2"))

# ---------------------------------------------------------------- counts and patching


def gather_tokens(tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """tokens [B, T, C] at the positions idx [B, k] -> [B, k, C], as one row lookup in the flattened
    [B * T, C] tensor. Same values as `tokens.gather(1, idx[..., None].expand(-1, -1, C))`, but an
    exported graph keeps the static token count k in its shapes, so later blocks need no run-time
    shape arithmetic (which costs more than the pruned compute saves at batch 1 on small models)."""
    offsets = torch.arange(tokens.shape[0], device=tokens.device).unsqueeze(1) * tokens.shape[1]
    return tokens.reshape(-1, tokens.shape[-1])[idx + offsets]


def tokens_entering_blocks(model: nn.Module, keep_at: dict[int, int]) -> list[int]:
    """Tokens entering each block (CLS included) when block i keeps keep_at[i] patch tokens."""
    prefix = int(model.num_prefix_tokens)
    current = int(model.patch_embed.num_patches)
    out = []
    for i in range(len(model.blocks)):
        if i in keep_at:
            current = min(current, keep_at[i])
        out.append(prefix + current)
    return out


_CLASSES: dict[tuple[type, type], type] = {}


def mixed_class(mixin: type, base: type, prefix: str, module) -> type:
    """`base` with `mixin` in front (ToMe-style in-place patching), made once per pair and
    registered in `module` under "<prefix><base name>" so a patched model can be pickled."""
    if issubclass(base, mixin):
        return base
    if (mixin, base) not in _CLASSES:
        name = f"{prefix}{base.__name__}"
        cls = type(name, (mixin, base), {"__module__": module.__name__})
        setattr(module, name, cls)
        _CLASSES[(mixin, base)] = cls
    return _CLASSES[(mixin, base)]


def logits_and_kept_masks(model: nn.Module, images: torch.Tensor,
                          features: Callable) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """What a pruner's `kept_token_masks` returns: the logits of `features(model, images, record=True)`
    (normed tokens, and per stage the original patch indices still carrying their own token) and
    those indices as bool masks over the model's patch grid (`patch_masks`)."""
    feats, kept = features(model, images, record=True)
    logits = model.forward_head(feats)
    return logits, patch_masks(kept, int(model.patch_embed.num_patches))


def patch_masks(kept: list[torch.Tensor], num_patches: int) -> list[torch.Tensor]:
    """Bool masks [B, num_patches] over the original patch grid, one per entry of `kept` (each
    [B, k] original patch indices still carrying their own token; -1: a token that holds no one
    patch, e.g. EViT's fused token): what kept_token_masks return."""
    return [torch.zeros(idx.shape[0], num_patches, dtype=torch.long, device=idx.device)
            .scatter_add_(1, idx.clamp_min(0), (idx >= 0).long()) > 0 for idx in kept]
