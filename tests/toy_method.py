"""A toy token method declared outside vitprune: before one block, keep the patch tokens with the
largest L2 norm. tests/test_new_method.py registers it by hand; the smoke profile names this file
as a plugin (`plugins: [tests/toy_method.py]`), so notebook 04 evaluates it as a comparator and
notebook 05 tables and draws its rows without any notebook naming it."""

import torch
from torch import nn

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.methods.method import TOKEN, Flag, Method, restore_entry, state_entry

ATTR = "toy_norm_keep"


def apply(model: nn.Module, keep: float = 0.5, at: int = 2) -> nn.Module:
    """Before block `at`, keep the `keep` share of patch tokens with the largest L2 norm (CLS stays)."""
    if not 0 < keep <= 1:
        raise UserError(f"keep must be in (0, 1], got {keep}")
    block = model.blocks[at]
    if getattr(block, "_toy_hook", None) is not None:
        block._toy_hook.remove()
    block._toy_k = int(model.patch_embed.num_patches * keep)
    block._toy_hook = block.register_forward_pre_hook(_keep_largest)
    setattr(model, ATTR, {"keep": keep, "at": at})
    return model


def _keep_largest(block, args):
    x = args[0]
    idx = x[:, 1:].norm(dim=-1).topk(block._toy_k, dim=1).indices.sort(dim=1).values
    block._toy_last = idx
    kept = torch.gather(x[:, 1:], 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    return (torch.cat([x[:, :1], kept], dim=1), *args[1:])


def tokens_per_block(model):
    cfg, n = getattr(model, ATTR), int(model.patch_embed.num_patches)
    k = int(n * cfg["keep"])
    return [n + 1 if i < cfg["at"] else k + 1 for i in range(len(model.blocks))]


def kept_token_masks(model, images):
    with torch.no_grad():
        logits = model(images)
    idx = model.blocks[getattr(model, ATTR)["at"]]._toy_last
    mask = torch.zeros(images.shape[0], int(model.patch_embed.num_patches), dtype=torch.bool)
    return logits, [mask.scatter(1, idx, True)]


def from_flags(values):
    return None if values.get("toy_keep") is None else {"keep": values["toy_keep"]}


METHOD = Method(name="toy", label="toy: largest-norm tokens", marker="X", kind=TOKEN, apply=apply,
             state=state_entry(ATTR, lambda m: getattr(m, ATTR, None)), restore=restore_entry(ATTR, apply),
             describe=lambda m: dict(getattr(m, ATTR)), tokens_per_block=tokens_per_block,
             kept_token_masks=kept_token_masks, flags=(Flag("--toy-keep", {"type": float, "help": "toy keep share"}),),
             from_flags=from_flags, parameters={"toy_keep_rates": param_rules.each(param_rules.RATE)},
             from_params=lambda params: {"keep": params["base_rate"]})
