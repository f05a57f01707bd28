"""Token selection that picks the same tokens in PyTorch and in an exported ONNX graph.

Every token method decides which tokens go on by ranking float scores: DynamicViT's top-k of
its predicted keep log-probabilities, the top-k of CLS attention (`training_free`, `evit`), ToMe's best
partner (an argmax) and its most similar edges (a sort). onnxruntime computes those scores with
other kernels, so they differ from PyTorch's by float rounding (~1e-6); where two scores are
closer than that, a plain top-k may rank them the other way, a different token survives and the
prediction can change (8 of 10k test images did, before this module, for one fmnist model).

`top_k` ranks integer keys instead: each score is clamped to [low, high], rounded to a multiple
of `step` and combined with the token's index, key = round(score / step) * n + (n - 1 - index),
in int64. Keys are exact and distinct, so both runtimes order them identically: exact ties go
to the lower index in both, and two scores less than `step` apart rank by rounded value and
index, not by float noise. A decision can still differ only when a score sits within float
noise of a rounding boundary *and* that token is within one step of the cut, which is rare;
`recording` lets `export.agreement` count it on real images rather than assume it.

`step` sits a few times above the float noise between the runtimes (~1e-5 on these scores,
measured by `export.agreement`) and well below the score differences a method acts on: a coarser
step (2^-8 was tried) merges real differences too -- a DynamicViT stage whose predictor scores
every token within 2e-3 of the others then keeps tokens by index, and lost 10 points. DynamicViT
ranks the log-odds log p(keep) - log p(drop) (p(keep)'s order; not log p(keep), which is exactly 0
for every token kept with p > 1 - 6e-8 in float32), the CLS-attention top-k log CLS attention.
ToMe's cosine similarity and EViT's CLS attention rank at `EXACT_STEP`, their float values, as
their official codes do.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

STEP = 2.0 ** -14  # 6.1e-5: rounding grid of the DynamicViT and CLS-attention rankings
LOG_RANGE = (-2.0 ** 20, 2.0 ** 20)  # scores in log space (log-odds, log attention); wide, so no real score is clamped
COSINE_RANGE = (-1.0, 1.0)
# ToMe's cosine similarities and EViT's attention weights rank by their float values (a grid below fp32's
# resolution near 1), as the official codes rank them. For ToMe: at STEP, 13-26 of 1,000 fmnist test images (r = 2, 3, 4 on the released
# vit_fmnist) got other logits than the official code's (up to 1.5); by value none did, and onnxruntime
# chose other tokens on one image either way (no prediction changed)
EXACT_STEP = 2.0 ** -30

_MAX_KEY = 2 ** 62  # int64 headroom: |round(score / step)| * n must stay below it


@dataclass
class Selection:
    """One ranking made while `recording`: the raw scores [..., n], how many were kept (`k`: the
    cut whose gap matters) and the chosen indices [..., k] (or the full order [..., n])."""

    score: torch.Tensor
    k: int
    indices: torch.Tensor


_recorders: list[list[Selection]] = []


@contextlib.contextmanager
def recording() -> Iterator[list[Selection]]:
    """Collect every ranking `top_k` makes inside the block (nested blocks each see all of them).
    Under ONNX tracing the recorded tensors can be returned as extra graph outputs."""
    records: list[Selection] = []
    _recorders.append(records)
    try:
        yield records
    finally:
        _recorders.remove(records)


def keys(score: torch.Tensor, step: float, low: float, high: float) -> torch.Tensor:
    """int64 ranking keys over the last dim of `score`: rounded score first, lower index on ties."""
    n = int(score.shape[-1])  # a Python int: an exported graph gets the tie-break order as a constant
    levels = max(abs(low), abs(high)) / step
    if levels * n >= _MAX_KEY:
        raise ValueError(f"score range {low}..{high} at step {step} over {n} tokens overflows int64 keys")
    rounded = torch.round(score.detach().float().clamp(low, high) / step).to(torch.int64)
    order = torch.arange(n - 1, -1, -1, device=score.device, dtype=torch.int64)  # n-1 for index 0
    return rounded * n + order


def top_k(score: torch.Tensor, k: int, *, step: float, low: float, high: float,
          exclude: torch.Tensor | None = None, full: bool = False, in_order: bool = False) -> torch.Tensor:
    """Indices of the `k` highest scores over the last dim, highest first, ranked by `keys`.
    `exclude` (bool, score's shape) ranks those entries last; `full` returns the whole order
    (the cut `k` is then only what `recording` measures the gap at); `in_order` returns the kept
    indices in increasing order instead (tokens keep their original order)."""
    key = keys(score, step, low, high)
    if exclude is not None:
        key = key.masked_fill(exclude, -_MAX_KEY)
    indices = key.topk(int(score.shape[-1]) if full else k, dim=-1).indices
    if in_order:  # a top-k of the smallest with a constant k, not sort(): an exported graph keeps k static
        indices = indices.topk(k, dim=-1, largest=False).values
    for records in _recorders:
        records.append(Selection(score=score.detach(), k=k, indices=indices))
    return indices


def cut_gaps(score: torch.Tensor, k: int) -> torch.Tensor:
    """Per leading index, the raw-score gap between the k-th and (k+1)-th highest of the last dim
    (inf when k is 0 or every token is kept): how close the ranking came to a different choice."""
    n = score.shape[-1]
    if k <= 0 or k >= n:
        return torch.full(score.shape[:-1], float("inf"))
    top = score.float().topk(k + 1, dim=-1).values
    return top[..., k - 1] - top[..., k]
