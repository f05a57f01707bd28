"""One interface over the methods that cut the tokens a ViT carries: DynamicViT's learned
pruning (`token_pruning`), EViT-style training-free pruning (`training_free`) and ToMe's
merging (`merging`). Each is a small patch over a timm VisionTransformer (as ToMe's
`tome/patch/timm.py` is); this registry names them, so code that handles "any token reducer"
(measurement, export, metrics, figures) asks `attached(model)` or `get(name)` instead of
importing and testing each module. A fourth method is one module plus one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from vitprune.errors import UserError
from vitprune.methods import merging, pruning_state, token_pruning, training_free
from vitprune.torchutil import unwrap


@dataclass(frozen=True)
class TokenReducer:
    """What every token reducer provides (each a function of its module):

    - `apply(model, **options)`: patch the model in place and return it (DynamicViT adds score
      predictors that then need training; the other two work as they are);
    - `tokens_per_block(model)`: tokens entering each block at the model's input size, CLS included;
    - `describe(model)`: the method's settings and token counts, as metrics.json records them;
    - `kept_token_masks(model, images)`: eval logits and, per stage, a bool mask [B, N] over the
      original patch grid of the patches whose own token is still there.
    """

    name: str  # also the `method` of the method's rows in Table 1
    module: ModuleType
    state_attr: str  # the attribute `apply` sets on the model (its settings)
    state_key: str  # its key in `pruning_state.snapshot` and in checkpoints
    apply: Callable[..., nn.Module]
    tokens_per_block: Callable[[nn.Module], list[int]]
    describe: Callable[[nn.Module], dict[str, Any]]
    kept_token_masks: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]

    def attached(self, model: nn.Module) -> bool:
        return getattr(unwrap(model), self.state_attr, None) is not None


REDUCERS: dict[str, TokenReducer] = {r.name: r for r in (
    TokenReducer("dynamicvit", token_pruning, pruning_state.TOKEN_ATTR, "token_pruning", token_pruning.attach,
                 token_pruning.tokens_per_block, token_pruning.describe, token_pruning.kept_token_masks),
    TokenReducer("training_free", training_free, pruning_state.TRAINING_FREE_ATTR, "training_free", training_free.apply,
                 training_free.tokens_per_block, training_free.describe, training_free.kept_token_masks),
    TokenReducer("merging", merging, pruning_state.MERGING_ATTR, "merging", merging.apply,
                 merging.tokens_per_block, merging.describe, merging.kept_token_masks),
)}


def get(name: str) -> TokenReducer:
    if name not in REDUCERS:
        raise UserError(f"no token reducer named {name!r}; known: {', '.join(REDUCERS)}")
    return REDUCERS[name]


def attached(model: nn.Module) -> TokenReducer | None:
    """The token reducer patched into `model`, or None (they exclude one another)."""
    return next((r for r in REDUCERS.values() if r.attached(model)), None)
