"""Parameters, MACs and FLOPs of a model and its pruned variants.

Units, stated once and used everywhere in vitprune:

* ``params``: number of parameter elements (``model.parameters()``, shared tensors once),
  including DynamicViT score predictors when attached.
* ``macs``: multiply-accumulates of ONE image (batch 1, eval mode, the model's input size).
  Counted with fvcore's ``FlopCountAnalysis``, which -- despite its name -- counts one fused
  multiply-add as one "flop", i.e. it counts MACs. We keep fvcore's convention for what is
  counted: matmul-like ops (linear, conv, matmul, bmm, einsum) at one MAC per
  multiply-add, plus its fixed per-element costs for normalisation layers (LayerNorm 5 or
  4, BatchNorm in eval 2 or 1, ...). Element-wise ops (add, GELU, softmax, the attention
  scale) are not counted; their names are returned in ``uncounted_ops``.
* ``flops = 2 * macs``. The study's Table 1 calls DeiT's MACs "FLOPs" (DeiT/DynamicViT
  report fvcore numbers) but doubles EfficientFormer's; we always print both, labelled.

Fused attention. timm runs attention through ``F.scaled_dot_product_attention`` (SDPA).
fvcore has no handle for ``aten::scaled_dot_product_attention`` and torch's
``FlopCounterMode`` has none for the CPU kernel ``_scaled_dot_product_flash_attention_for_cpu``,
so both silently drop the two attention matmuls (DeiT-B: 16.87 G instead of 17.58 G MACs).
We add the handle: QK^T and AV cost ``B*H*Nq*Nk*D`` and ``B*H*Nq*Nk*Dv`` MACs; the softmax
and the scaling are not counted, exactly as fvcore does not count them on the unfused path,
so fused and unfused attention give identical counts (a test checks it).

Why fvcore rather than ``torch.utils.flop_counter``: its numbers are the ones DeiT,
DynamicViT and the study quote (norm layers included), it traces the module call tree so
replaced attention modules and top-k token gathering (a trace at batch 1 records the
gathered shapes) are counted as they actually run, and it reports per-module totals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

SDPA_OP = "aten::scaled_dot_product_attention"

# Ops with real arithmetic that fvcore has no handle for; if one of these shows up in a
# trace, the count would be silently low, so we refuse instead (see _check_uncounted).
_HEAVY_UNHANDLED = ("baddbmm", "addbmm", "addmv", "mv", "dot", "tensordot", "conv_tbc",
                    "_scaled_dot_product", "multi_head_attention", "lstm", "gru", "rnn")


# --------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------

def _shape(value: Any) -> list[int] | None:
    """Static shape of a traced jit value (None for non-tensors / unknown shapes)."""
    try:
        if value.isCompleteTensor():
            return list(value.type().sizes())
    except AttributeError:
        pass
    return None


def sdpa_mac_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """fvcore handle for ``aten::scaled_dot_product_attention``: MACs of QK^T plus AV.

    q: ``[..., Nq, D]``, k: ``[..., Nk, D]``, v: ``[..., Nk, Dv]``, out: ``[..., Nq, Dv]``.
    Batch/head dims broadcast (and grouped-query attention repeats k/v heads), so the
    number of (batch, head) pairs is taken from q and out, which carry the full count.
    MACs = prod(q[:-1]) * Nk * D  +  prod(out[:-1]) * Nk * Dv. Softmax, scale and mask are
    element-wise and, following fvcore's convention, not counted.
    """
    q, k = _shape(inputs[0]), _shape(inputs[1])
    out = _shape(outputs[0])
    if q is None or k is None or out is None:
        raise RuntimeError("scaled_dot_product_attention traced without static shapes")
    n_k = k[-2]
    return math.prod(q[:-1]) * n_k * q[-1] + math.prod(out[:-1]) * n_k * out[-1]


def baddbmm_mac_handle(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm(input, b1, b2)``: the batched matmul b1 @ b2, one MAC per multiply-add."""
    b1, b2 = _shape(inputs[1]), _shape(inputs[2])
    return math.prod(b1) * b2[-1]


def input_shape_for(model: nn.Module, img_size: int | Sequence[int] | None = None,
                    in_chans: int | None = None) -> tuple[int, int, int, int]:
    """Batch-1 input shape ``(1, C, H, W)`` the model was built for, with overrides.

    timm's data config gives the pretrained size, which is stale when the model was created
    with ``img_size=``/``in_chans=`` (e.g. a 28x28 Fashion-MNIST ViT from ``deit_*``); the
    patch embedding's fixed ``img_size`` and the first convolution's input channels win.
    """
    from timm.data import resolve_model_data_config

    c, h, w = resolve_model_data_config(model)["input_size"]
    patch_embed = getattr(model, "patch_embed", None)
    embed_size = getattr(patch_embed, "img_size", None)
    if (isinstance(embed_size, (tuple, list)) and len(embed_size) == 2
            and all(isinstance(v, int) for v in embed_size)):
        h, w = embed_size
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None:
        c = first_conv.in_channels
    if img_size is not None:
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if in_chans is not None:
        c = in_chans
    return (1, int(c), int(h), int(w))


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def _check_uncounted(uncounted: dict[str, int]) -> None:
    heavy = [op for op in uncounted if any(h in op for h in _HEAVY_UNHANDLED)]
    if heavy:
        raise RuntimeError(
            f"MAC count would be incomplete: no handle for {', '.join(sorted(heavy))}; "
            "add one in vitprune/measure/ (_extra_handles)")


def _extra_handles() -> dict[str, Any]:
    return {SDPA_OP: sdpa_mac_handle, "aten::baddbmm": baddbmm_mac_handle}


def count(model: nn.Module, img_size: int | Sequence[int] | None = None,
          in_chans: int | None = None, *, input_shape: Sequence[int] | None = None,
          per_module: bool = False) -> dict[str, Any]:
    """Count params, MACs and FLOPs of ``model`` for one image, in eval mode.

    ``img_size``/``in_chans`` override the size from timm's data config (the model must
    accept it); ``input_shape`` (full shape, batch first) overrides both, for non-timm
    modules. Returns ``{"params", "macs", "flops" (= 2*macs), "input_shape",
    "macs_by_operator", "uncounted_ops"}`` and, with ``per_module``, ``"macs_by_module"``
    (every submodule name -> MACs, "" = whole model). MACs are fvcore's "flops" plus the
    attention matmuls inside fused SDPA; see the module docstring. The model's train/eval
    mode is restored afterwards; attention stays fused.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
        from fvcore.nn import FlopCountAnalysis

    shape = tuple(input_shape) if input_shape is not None else input_shape_for(
        model, img_size, in_chans)
    if shape[0] != 1:
        raise ValueError(f"count() is per image: batch must be 1, got input_shape {shape}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(shape, device=device, dtype=dtype)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            analysis = FlopCountAnalysis(model, x)
            analysis.set_op_handle(**_extra_handles())
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            macs = int(analysis.total())
            by_op = {k: int(v) for k, v in sorted(analysis.by_operator().items())}
            uncounted = dict(sorted(analysis.unsupported_ops().items()))
            by_module = ({k: int(v) for k, v in analysis.by_module().items()}
                         if per_module else None)
    finally:
        model.train(was_training)
    _check_uncounted(uncounted)

    result: dict[str, Any] = {
        "params": count_params(model),
        "macs": macs,
        "flops": 2 * macs,
        "input_shape": list(shape),
        "macs_by_operator": by_op,
        "uncounted_ops": uncounted,
    }
    if by_module is not None:
        result["macs_by_module"] = by_module
    return result
