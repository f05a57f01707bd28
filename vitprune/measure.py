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

import argparse
import copy
import difflib
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

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

def benchmark(baseline: nn.Module, variant: nn.Module, input_shape: Sequence[int], *,
              warmup: int = 2, repeats: int = 10, threads: int | None = None,
              baseline_macs: int | None = None, variant_macs: int | None = None,
              progress: bool = False) -> dict[str, Any]:
    """Median latency of ``baseline`` vs ``variant``, timed interleaved in this process.

    Both run in eval mode under ``torch.inference_mode`` on the same random input of
    ``input_shape`` (batch first). After ``warmup`` runs of each, ``repeats`` rounds time
    one forward of each, alternating which goes first (ABBA...) so drift in machine load
    hits both alike. Reports medians in milliseconds, ``speedup`` = baseline/variant
    median and, when MACs are given, ``mac_ratio`` = baseline/variant MACs and
    ``speedup_over_mac_ratio`` (1.0 = the speedup the arithmetic promises). Threads are
    set to ``threads`` (default: current) for the run and restored afterwards.
    """
    if repeats < 1 or warmup < 0:
        raise UserError(f"need --repeats >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    old_threads = torch.get_num_threads()
    threads = int(threads or old_threads)
    modes = (baseline.training, variant.training)
    param = next(baseline.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(tuple(input_shape), device=device)
    times: dict[str, list[float]] = {"baseline": [], "variant": []}
    models = {"baseline": baseline.eval(), "variant": variant.eval()}

    def run(name: str) -> float:
        start = time.perf_counter()
        models[name](x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) * 1e3

    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                run("baseline")
                run("variant")
            rounds = range(repeats)
            if progress:
                from tqdm.auto import tqdm
                rounds = tqdm(rounds, desc="bench (interleaved)", file=sys.stderr)
            for i in rounds:
                order = ("baseline", "variant") if i % 2 == 0 else ("variant", "baseline")
                for name in order:
                    times[name].append(run(name))
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
        "device": str(device),
        "torch_version": torch.__version__,
    }
    if baseline_macs and variant_macs:
        out["baseline_macs"] = int(baseline_macs)
        out["variant_macs"] = int(variant_macs)
        out["mac_ratio"] = baseline_macs / variant_macs
        out["speedup_over_mac_ratio"] = out["speedup"] / out["mac_ratio"]
    return out


# --------------------------------------------------------------------------------------
# building models for the command line
# --------------------------------------------------------------------------------------

def _is_checkpoint_arg(name: str) -> bool:
    return os.path.exists(name) or os.sep in name or name.endswith((".pt", ".pth", ".bin"))


def _unknown_model_error(name: str) -> UserError:
    import timm

    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UserError(
        f"unknown model {name!r}{hint}: give a timm model name or an existing checkpoint file; "
        "list names with: python -c \"import timm; print(timm.list_models('deit*'))\"")


def _create_by_name(name: str, num_classes: int | None, img_size: int | None) -> nn.Module:
    """timm model by name, random init; through vitprune.models when it exists (it
    registers the embedded small ViT with timm)."""
    import timm

    try:
        from vitprune import models as vp_models
    except ImportError:
        vp_models = None
    if not timm.is_model(name):
        raise _unknown_model_error(name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        if vp_models is not None and hasattr(vp_models, "create_model"):
            return vp_models.create_model(name, pretrained=False, **kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UserError(f"model {name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. a bad pretrained tag
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot build model {name!r} with {kwargs or 'defaults'}: {first}; "
                        "list names with: python -c \"import timm; print(timm.list_pretrained('deit*'))\"") from exc


def _load_checkpoint(path: str) -> nn.Module:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path!r} (give an existing .pt file "
                        "or a timm model name)")
    try:
        from vitprune import models as vp_models
    except ImportError as exc:
        raise UserError(f"cannot load checkpoint {path!r}: vitprune.models is not available "
                        f"({exc})") from exc
    return vp_models.load_checkpoint(path)


def _checkpoint_base(path: str) -> nn.Module:
    """The unpruned model a checkpoint was built from (its name and kwargs, random init)."""
    from vitprune import models as vp_models  # also registers the embedded model names

    ckpt = vp_models.read_checkpoint(path)
    return vp_models.create_model(ckpt["model_name"], pretrained=False,
                                  **dict(ckpt.get("model_kwargs") or {}))


def _float_list(text: str | None, flag: str) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated numbers like 0.7,0.49,0.34; "
                        f"got {text!r}") from exc


def _int_list(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"{flag} takes comma-separated block indices like 3,6,9; "
                        f"got {text!r}") from exc


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="timm model name or vitprune checkpoint path")
    p.add_argument("--img-size", type=int, help="input resolution (default: timm data config)")
    p.add_argument("--num-classes", type=int, help="classifier classes (default: the model's)")
    g = p.add_argument_group("token pruning (DynamicViT)")
    g.add_argument("--base-rate", type=float, help="keep-ratio base rho, e.g. 0.7")
    g.add_argument("--schedule", choices=("geometric", "linear", "explicit"),
                   help="keep-ratio schedule (default geometric)")
    g.add_argument("--keep-ratios", help="explicit keep ratios, comma-separated")
    g.add_argument("--locations", help="blocks before which tokens are pruned (default 3,6,9)")
    g.add_argument("--allow-empty-stage", action="store_true",
                   help="allow a stage that keeps no patch token (the study's degenerate row)")
    g = p.add_argument_group("block pruning (heads + MLP channels)")
    g.add_argument("--keep-heads", type=float, help="fraction of attention heads kept")
    g.add_argument("--keep-mlp", type=float, help="fraction of MLP hidden channels kept")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _variant_options(args: argparse.Namespace) -> dict[str, Any]:
    """Validated token/block options from the parsed arguments (empty = no variant)."""
    opts: dict[str, Any] = {}
    token_flags = (args.schedule, args.keep_ratios, args.locations)
    if args.base_rate is not None or args.keep_ratios is not None:
        if args.base_rate is not None and not 0.0 < args.base_rate <= 1.0:
            raise UserError(f"--base-rate must be in (0, 1], got {args.base_rate}")
        token = {"base_rate": args.base_rate,
                 "schedule": args.schedule or ("explicit" if args.base_rate is None
                                               else "geometric"),
                 "keep_ratios": _float_list(args.keep_ratios, "--keep-ratios"),
                 "allow_empty_stage": bool(args.allow_empty_stage)}
        locations = _int_list(args.locations, "--locations")
        if locations is not None:
            token["locations"] = locations
        opts["token"] = token
    elif any(v is not None for v in token_flags) or args.allow_empty_stage:
        raise UserError("--schedule/--locations/--allow-empty-stage need --base-rate R "
                        "(or --keep-ratios for --schedule explicit)")
    if args.keep_heads is not None or args.keep_mlp is not None:
        block = {"keep_heads": 1.0 if args.keep_heads is None else args.keep_heads,
                 "keep_mlp": 1.0 if args.keep_mlp is None else args.keep_mlp}
        for flag, value in block.items():
            if not 0.0 <= value <= 1.0:
                raise UserError(f"--{flag.replace('_', '-')} must be a fraction in [0, 1], "
                                f"got {value}")
        opts["block"] = block
    return opts


def apply_variant(model: nn.Module, opts: dict[str, Any]) -> nn.Module:
    """Apply block pruning (first) then token pruning (second) in place; return the model.

    ``opts = {"block": {"keep_heads": F, "keep_mlp": F}, "token": {**token_pruning.attach
    kwargs}}``, either key optional (what the ``--keep-heads/--base-rate`` flags build).
    Block pruning ranks by weight magnitude (no data needed)."""
    if "block" in opts:
        from vitprune import block_pruning

        model = block_pruning.prune_to(model, opts["block"]["keep_heads"],
                                       opts["block"]["keep_mlp"]) or model
    if "token" in opts:
        from vitprune import token_pruning

        # on an already token-pruned model, attach() only changes the schedule
        model = token_pruning.attach(model, **opts["token"]) or model
    return model


def _build(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], bool]:
    """(model incl. variant, variant options, is_checkpoint) for `measure`/`bench`."""
    if args.img_size is not None and args.img_size < 1:
        raise UserError(f"--img-size must be a positive number of pixels, got {args.img_size}")
    if args.num_classes is not None and args.num_classes < 0:
        raise UserError(f"--num-classes must be >= 0 (0 = no classifier), got {args.num_classes}")
    opts = _variant_options(args)
    is_ckpt = _is_checkpoint_arg(args.model)
    if is_ckpt:
        if args.num_classes is not None or args.img_size is not None:
            raise UserError("--num-classes/--img-size cannot change a checkpoint's model; "
                            "they are fixed by the checkpoint")
        model = _load_checkpoint(args.model)
    else:
        model = _create_by_name(args.model, args.num_classes, args.img_size)
    return model, opts, is_ckpt


def _describe(model: nn.Module, args: argparse.Namespace, opts: dict[str, Any],
              is_ckpt: bool) -> dict[str, Any]:
    """Count `model` (already including its variant) and add the CLI's context keys."""
    shape_text = "x".join(map(str, input_shape_for(model, args.img_size)))
    try:
        result = count(model, img_size=args.img_size)
    except UserError:
        raise
    except Exception as exc:  # trace/shape failures: one clear line, not a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"could not run {args.model!r} on a {shape_text} input for counting "
                        f"(does the model support --img-size?): {first}") from exc
    _, c, h, w = result["input_shape"]
    info: dict[str, Any] = {
        "model": getattr(model, "vitprune_model_name", None) or (
            args.model if not is_ckpt else getattr(model, "default_cfg", {}).get(
                "architecture", type(model).__name__)),
        "checkpoint": os.path.abspath(args.model) if is_ckpt else None,
        "img_size": h if h == w else [h, w],
        "in_chans": c,
    }
    info.update(result)
    info["counter"] = "fvcore FlopCountAnalysis + SDPA handle (MACs; flops = 2*macs)"
    if "block" in opts:
        info.update(opts["block"])
    if getattr(model, "vitprune_block_spec", None) is not None:
        info["block_spec"] = model.vitprune_block_spec
    if getattr(model, "vitprune_token_pruning", None):
        from vitprune import token_pruning

        info["token_pruning"] = model.vitprune_token_pruning
        info["tokens_per_block"] = token_pruning.tokens_per_block(model)
    return info


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _aligned(rows: list[tuple[str, str]]) -> str:
    """`label  value` lines with the labels padded to one width."""
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def format_counts(info: dict[str, Any]) -> str:
    """Readable labelled table of a `measure` result."""
    shape = " x ".join(str(s) for s in info["input_shape"])
    rows = [("model", info["model"] + (f"  ({info['checkpoint']})" if info.get("checkpoint")
                                       else "  (random init)")),
            ("input", f"{shape}  (batch 1, eval mode)"),
            ("params", f"{_human(info['params'])}  ({info['params']:,})"),
            ("MACs", f"{_human(info['macs'])}  ({info['macs']:,} multiply-accumulates)"),
            ("FLOPs", f"{_human(info['flops'])}  (= 2 x MACs)")]
    if "block_spec" in info:
        spec = info["block_spec"]
        rows.append(("heads", " ".join(str(b["heads"]) for b in spec)))
        rows.append(("MLP width", " ".join(str(b["mlp"]) for b in spec)))
    if "tokens_per_block" in info:
        rows.append(("tokens/block", " ".join(str(t) for t in info["tokens_per_block"])))
    if info.get("uncounted_ops"):
        rows.append(("not counted", ", ".join(sorted(info["uncounted_ops"]))
                     + "  (no MACs by fvcore's convention)"))
    return _aligned(rows)


def main(argv: list[str]) -> int:
    """`python -m vitprune measure MODEL [...]`: params, MACs, FLOPs (see DESIGN.md)."""
    parser = argparse.ArgumentParser(
        prog="python -m vitprune measure",
        description="Params, MACs and FLOPs (= 2 x MACs) of a model at batch 1, eval mode, "
                    "fused attention counted. Variants: token pruning and/or block pruning "
                    "(block applied first).")
    _add_model_args(parser)
    args = parser.parse_args(argv)
    model, opts, is_ckpt = _build(args)
    model = apply_variant(model, opts)
    info = _describe(model, args, opts, is_ckpt)
    if args.json:
        print(json.dumps(info))
    else:
        print(format_counts(info))
    return 0


def format_bench(res: dict[str, Any]) -> str:
    rows = [("baseline", f"{res['baseline_ms']:.2f} ms (median of {res['repeats']})"),
            ("variant", f"{res['variant_ms']:.2f} ms (median of {res['repeats']})"),
            ("speedup", f"{res['speedup']:.3f}x  (baseline / variant latency)")]
    if "mac_ratio" in res:
        rows.append(("MAC ratio", f"{res['mac_ratio']:.3f}x  (baseline / variant MACs)"))
        rows.append(("speedup/MAC ratio", f"{res['speedup_over_mac_ratio']:.3f}"))
    rows.append(("setting", f"batch {res['batch_size']}, {res['threads']} threads, "
                            f"{res['warmup']} warm-up, interleaved"))
    return _aligned(rows)


def bench_main(argv: list[str]) -> int:
    """`python -m vitprune bench MODEL [...]`: interleaved latency, baseline vs variant."""
    parser = argparse.ArgumentParser(
        prog="python -m vitprune bench",
        description="Latency of the unpruned model vs its token/block-pruned variant, timed "
                    "interleaved in one process (medians), with the MAC ratio.")
    _add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's current setting)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each model")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each model")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")

    model, opts, is_ckpt = _build(args)
    if is_ckpt:
        pruned_already = (getattr(model, "vitprune_block_spec", None) is not None
                          or bool(getattr(model, "vitprune_token_pruning", None)))
        if not opts and not pruned_already:
            raise UserError("nothing to compare: the checkpoint is not pruned; give "
                            "--base-rate and/or --keep-heads/--keep-mlp")
        baseline = _checkpoint_base(args.model)
        variant = apply_variant(model, opts)
    else:
        if not opts:
            raise UserError("nothing to compare: give a variant with --base-rate R and/or "
                            "--keep-heads F --keep-mlp F")
        baseline = model
        variant = apply_variant(copy.deepcopy(model), opts)

    base_info = _describe(baseline, args, {}, False)
    var_info = _describe(variant, args, opts, is_ckpt)
    shape = [args.batch_size] + var_info["input_shape"][1:]
    res = benchmark(baseline, variant, shape, warmup=args.warmup, repeats=args.repeats,
                    threads=args.threads, baseline_macs=base_info["macs"],
                    variant_macs=var_info["macs"], progress=not args.json)
    res.update({"model": var_info["model"], "checkpoint": var_info["checkpoint"],
                "img_size": var_info["img_size"],
                "baseline_params": base_info["params"], "variant_params": var_info["params"]})
    for key in ("keep_heads", "keep_mlp", "block_spec", "token_pruning", "tokens_per_block"):
        if key in var_info:
            res[key] = var_info[key]
    if args.json:
        print(json.dumps(res))
    else:
        print(format_bench(res))
    return 0
