"""Parameters, MACs, FLOPs and interleaved latency of a model and its pruned variants.

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

import contextlib
import functools
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vitprune import param_rules
from vitprune.errors import UserError

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
            "add one in vitprune/measure.py (_extra_handles)")


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


# --------------------------------------------------------------------------------------
# latency
# --------------------------------------------------------------------------------------

BENCH_PRECISIONS = param_rules.CHOICES["bench_precision"]  # both models of a comparison run at the one precision asked for


def autocast_wrapped(model: nn.Module) -> bool:
    """Whether a module of `model` carries an instance-level forward, as the autocast wrapper
    `Accelerator.prepare` leaves on a model it did not hand back (see engine.handed_back)."""
    return any("_original_forward" in m.__dict__ or "forward" in m.__dict__ for m in model.modules())


MIN_ROUND_MS = 25.0
"""Shortest timed stretch of one model in one round: a sub-millisecond forward is called
repeatedly (the same number of times for both models) until the slower one fills this, so
timer resolution and one-off scheduler hiccups do not decide a median of a handful of rounds."""


def interleaved(runners: dict[str, Callable[[], Any]], *, warmup: int, repeats: int,
                min_round_ms: float = MIN_ROUND_MS, desc: str | None = None) -> tuple[dict[str, list[float]], int]:
    """Time each callable in ``repeats`` rounds, the order reversed every round (ABBA...) so drift
    in machine load hits all alike, after ``warmup`` untimed calls of each. Each round calls
    every runner ``calls`` times, ``calls`` chosen from the slowest warm-up call so a round
    lasts at least ``min_round_ms`` (1 without warm-up). Returns ms per call per round, by
    name, and ``calls``. The one timing loop of `benchmark` (torch) and
    `runtime_bench.benchmark_onnx` (onnxruntime)."""
    if repeats < 1 or warmup < 0:
        raise UserError(f"need --repeats >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    names = list(runners)

    def timed(name: str, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            runners[name]()
        return (time.perf_counter() - start) * 1e3 / calls

    slowest = 0.0
    for _ in range(warmup):
        slowest = max(timed(name, 1) for name in names)
    calls = max(1, math.ceil(min_round_ms / slowest)) if slowest > 0 else 1
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = range(repeats)
    if desc:
        from tqdm.auto import tqdm
        rounds = tqdm(rounds, desc=desc, file=sys.stderr)
    for i in rounds:
        for name in (names if i % 2 == 0 else names[::-1]):
            times[name].append(timed(name, calls))
    return times, calls


def benchmark(baseline: nn.Module, variant: nn.Module, input_shape: Sequence[int], *,
              warmup: int = 2, repeats: int = 10, threads: int | None = None,
              baseline_macs: int | None = None, variant_macs: int | None = None,
              precision: str = "fp32", progress: bool = False,
              min_round_ms: float = MIN_ROUND_MS) -> dict[str, Any]:
    """Median latency of ``baseline`` vs ``variant``, timed interleaved in this process.

    Both run in eval mode under ``torch.inference_mode`` on the same random input of
    ``input_shape`` (batch first), on the baseline's device and at one ``precision``: fp32, or
    bf16 autocast around both (the model weights stay as they are). A model whose forward still
    carries a hidden autocast wrapper (a model `Accelerator.prepare`d in bf16 and not handed
    back) is refused: it would be timed at another precision than the one recorded. Timing
    protocol: `interleaved` (rounds alternate which model goes first, each round long enough
    for the clock). Reports medians in milliseconds per forward,
    ``speedup`` = baseline/variant median and, when MACs are given, ``mac_ratio`` =
    baseline/variant MACs and ``speedup_over_mac_ratio`` (1.0 = the speedup the arithmetic
    promises; well above 1 is a measurement to explain, not a result). Threads are set to
    ``threads`` (default: current) for the run and restored afterwards.
    """
    if precision not in BENCH_PRECISIONS:
        raise UserError(f"benchmark precision must be one of {', '.join(BENCH_PRECISIONS)}, got {precision!r}")
    for name, model in (("baseline", baseline), ("variant", variant)):
        if autocast_wrapped(model):
            raise UserError(f"the {name} model's forward is wrapped (accelerate autocast left on it), so it would "
                            f"not run at {precision}; train it through vitprune.engine, which hands models back bare")
    old_threads = torch.get_num_threads()
    threads = int(threads or old_threads)
    modes = (baseline.training, variant.training)
    param = next(baseline.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(tuple(input_shape), device=device)
    models = {"baseline": baseline.eval(), "variant": variant.eval()}
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def call(name: str) -> None:
        with autocast:
            models[name](x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times, calls = interleaved({name: functools.partial(call, name) for name in models},
                                       warmup=warmup, repeats=repeats, min_round_ms=min_round_ms,
                                       desc="bench (interleaved)" if progress else None)
    finally:
        torch.set_num_threads(old_threads)
        baseline.train(modes[0])
        variant.train(modes[1])

    base_ms = statistics.median(times["baseline"])
    var_ms = statistics.median(times["variant"])
    out: dict[str, Any] = {
        "baseline_ms": base_ms,
        "variant_ms": var_ms,
        "speedup": base_ms / var_ms,
        "baseline_ms_runs": times["baseline"],
        "variant_ms_runs": times["variant"],
        "batch_size": int(input_shape[0]),
        "input_shape": list(input_shape),
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "calls_per_round": calls,
        "device": str(device),
        "precision": precision,
        "torch_version": torch.__version__,
    }
    if baseline_macs and variant_macs:
        out["baseline_macs"] = int(baseline_macs)
        out["variant_macs"] = int(variant_macs)
        out["mac_ratio"] = baseline_macs / variant_macs
        out["speedup_over_mac_ratio"] = out["speedup"] / out["mac_ratio"]
    return out
