"""`python -m vitprune measure` and `python -m vitprune bench`: parse the model and variant
options, build the model (timm name or vitprune checkpoint), apply the variant, and print the
counts (`vitprune.measure.count`) or the interleaved latency (`vitprune.measure.benchmark`).
MODEL may also be a run directory (its model.pt; shared with `export`), and `--weights FILE`
loads plain weights (the official DeiT `{"model": state_dict}` layout) into the named timm model.
Units as in `vitprune.measure`: MACs per image at batch 1, FLOPs = 2 x MACs, tokens incl. CLS.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
from pathlib import Path
from typing import Any

import timm
from torch import nn

from vitprune import measure, models
from vitprune.errors import UserError
from vitprune.deploy import runtime_bench
from vitprune.methods import registry
from vitprune.methods.method import TOKEN, WIDTH


# --------------------------------------------------------------------------------------
# building models for the command line
# --------------------------------------------------------------------------------------

def _is_checkpoint_arg(name: str) -> bool:
    return os.path.exists(name) or os.sep in name or name.endswith((".pt", ".pth", ".bin"))


def _unknown_model_error(name: str) -> UserError:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return UserError(
        f"unknown model {name!r}{hint}: give a timm model name or an existing checkpoint file; "
        "list names with: python -c \"import timm; print(timm.list_models('deit*'))\"")


def _create_by_name(name: str, num_classes: int | None, img_size: int | None) -> nn.Module:
    """timm model by name, random init, through vitprune.models (which registers the embedded
    small ViT with timm)."""
    if not timm.is_model(name):
        raise _unknown_model_error(name)
    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if img_size is not None:
        kwargs["img_size"] = img_size
    try:
        return models.create_model(name, pretrained=False, **kwargs)
    except TypeError as exc:
        raise UserError(f"model {name!r} does not accept {sorted(kwargs)}: {exc}") from exc
    except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. a bad pretrained tag
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"cannot build model {name!r} with {kwargs or 'defaults'}: {first}; "
                        "list names with: python -c \"import timm; print(timm.list_pretrained('deit*'))\"") from exc


def _resolve(model_arg: str) -> str:
    """A run directory means its model.pt; anything else is passed on unchanged."""
    path = Path(model_arg)
    if path.is_dir():
        ckpt = path / "model.pt"
        if not ckpt.is_file():
            found = sorted(p.relative_to(path).as_posix() for p in path.glob("*/model.pt"))
            hint = f"; checkpoints below it: {', '.join(found[:6])}" if found else ""
            raise UserError(f"run directory {path} has no model.pt{hint}; give a run directory of "
                            f"notebook 01-04 or a checkpoint file")
        return str(ckpt)
    return model_arg


def _load_checkpoint(path: str) -> nn.Module:
    if not os.path.isfile(path):
        raise UserError(f"checkpoint file not found: {path!r} (give an existing .pt file "
                        "or a timm model name)")
    return models.load_checkpoint(path)


def _checkpoint_base(path: str) -> nn.Module:
    """The unpruned model a checkpoint was built from (its name and kwargs, random init)."""
    ckpt = models.read_checkpoint(path)
    return models.create_model(ckpt["model_name"], pretrained=False,
                               **dict(ckpt.get("model_kwargs") or {}))


def _add_model_args(p: argparse.ArgumentParser,
                    model_help: str = "timm model name, vitprune checkpoint, or a run directory "
                                      "holding model.pt") -> None:
    p.add_argument("model", metavar="MODEL", help=model_help)
    p.add_argument("--weights", metavar="FILE",
                   help="load this weights file (official DeiT {'model': state_dict}, or a bare state dict) "
                        "into the timm model MODEL names, e.g. deit_base_patch16_224 --weights "
                        "deit_base_patch16_224-b5f2ef4d.pth")
    p.add_argument("--img-size", type=int, help="input resolution (default: timm data config)")
    p.add_argument("--num-classes", type=int, help="classifier classes (default: the model's)")
    p.add_argument("--method", choices=list(registry.METHODS),
                   help="the pruning method the flags below configure (default: the one whose flags are given)")
    added = set()
    for method in registry.METHODS.values():
        flags = [f for f in method.flags if f.flag not in added]
        if flags:
            group = p.add_argument_group(f"{method.label} (--method {method.name})")
            for flag in flags:
                group.add_argument(flag.flag, **flag.options)
                added.add(flag.flag)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _variant_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """{method name: apply options} from the parsed flags, at most one method of each kind (empty:
    no variant). Without --method, a kind's method is the one declaring the most of the flags
    given (the first registered on a tie: --base-rate alone means DynamicViT)."""
    given = {f.flag for m in registry.METHODS.values() for f in m.flags
             if getattr(args, f.dest) is not None and getattr(args, f.dest) is not False}
    chosen: dict[str, dict[str, Any]] = {}
    for kind in (WIDTH, TOKEN):
        methods = [m for m in registry.METHODS.values() if m.kind == kind]
        own = given & {f.flag for m in methods for f in m.flags}
        if args.method and registry.get(args.method).kind == kind:
            method = registry.get(args.method)
        elif own:
            method = max(methods, key=lambda m: len(own & {f.flag for f in m.flags}))
        else:
            continue
        stray = own - {f.flag for f in method.flags}
        if stray:
            raise UserError(f"{', '.join(sorted(stray))} belong to another {kind} method than {method.name}; "
                            f"use one {kind} method at a time")
        options = method.from_flags({f.dest: getattr(args, f.dest) for f in method.flags})
        if options is None:
            raise UserError(f"--method {method.name} needs its options: "
                            f"{', '.join(f.flag for f in method.flags) or 'none declared'}")
        chosen[method.name] = options
    return chosen


def apply_variant(model: nn.Module, opts: dict[str, dict[str, Any]]) -> nn.Module:
    """Apply the chosen methods ({name: options}, what `_variant_options` builds) in place,
    width methods first; on a token-pruned checkpoint, DynamicViT's options only change its
    schedule. Block pruning from the flags ranks by weight magnitude (no data needed)."""
    return registry.apply_all(model, opts)


def _build(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any], bool]:
    """(model incl. variant, variant options, is_checkpoint) for `measure`/`bench`."""
    if args.img_size is not None and args.img_size < 1:
        raise UserError(f"--img-size must be a positive number of pixels, got {args.img_size}")
    if args.num_classes is not None and args.num_classes < 0:
        raise UserError(f"--num-classes must be >= 0 (0 = no classifier), got {args.num_classes}")
    opts = _variant_options(args)
    args.model = _resolve(args.model)
    is_ckpt = _is_checkpoint_arg(args.model)
    if is_ckpt:
        if args.weights is not None:
            raise UserError(f"--weights loads a weights file into the timm model MODEL names, but {args.model!r} "
                            "is a checkpoint already: drop --weights, or give a model name such as "
                            f"deit_base_patch16_224 --weights {args.weights}")
        if args.num_classes is not None or args.img_size is not None:
            raise UserError("--num-classes/--img-size cannot change a checkpoint's model; "
                            "they are fixed by the checkpoint")
        model = _load_checkpoint(args.model)
    else:
        if args.weights is not None and not os.path.isfile(args.weights):
            raise UserError(f"weights file not found: {args.weights!r} (give an existing file, e.g. the "
                            "official deit_base_patch16_224-b5f2ef4d.pth)")
        model = _create_by_name(args.model, args.num_classes, args.img_size)
        if args.weights is not None:
            models.load_weights(model, models.read_state_dict(args.weights), source=args.weights)
    return model, opts, is_ckpt


def _describe(model: nn.Module, args: argparse.Namespace, opts: dict[str, Any],
              is_ckpt: bool) -> dict[str, Any]:
    """Count `model` (already including its variant) and add the CLI's context keys."""
    shape_text = "x".join(map(str, measure.input_shape_for(model, args.img_size)))
    try:
        result = measure.count(model, img_size=args.img_size)
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
        "weights": os.path.abspath(args.weights) if args.weights else None,
        "img_size": h if h == w else [h, w],
        "in_chans": c,
    }
    info.update(result)
    info["counter"] = "fvcore FlopCountAnalysis + SDPA handle (MACs; flops = 2*macs)"
    info.update(_method_info(model, opts))
    return info


def _method_info(model: nn.Module, opts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The width methods' fractions asked for, every applied method's state, and the tokens
    entering each block under the token method (CLS included)."""
    info = {k: v for name, options in opts.items() if registry.get(name).kind == WIDTH for k, v in options.items()}
    info.update({k: v for k, v in registry.method_state(model).items() if v is not None and v is not False})
    token_method = registry.attached(model)
    if token_method is not None:
        info["tokens_per_block"] = token_method.tokens_per_block(model)
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
    source = info.get("checkpoint") or (f"weights {info['weights']}" if info.get("weights") else "random init")
    rows = [("model", f"{info['model']}  ({source})"),
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
    runtime = res.get("runtime", "torch") + (f" {res['precision']}" if "precision" in res else "")
    rows.append(("setting", f"{runtime}, batch {res['batch_size']}, {res['threads']} threads, "
                            f"{res['warmup']} warm-up, interleaved"))
    return _aligned(rows)


def _bench_args(argv: list[str]) -> argparse.Namespace:
    """`bench`'s arguments, each checked (one error line before any model is built)."""
    parser = argparse.ArgumentParser(
        prog="python -m vitprune bench",
        description="Latency of the unpruned model vs its token/block-pruned variant, timed "
                    "interleaved in one process (medians), with the MAC ratio.")
    _add_model_args(parser)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads / onnxruntime intra-op threads (default: torch's current setting)")
    parser.add_argument("--runtime", choices=runtime_bench.RUNTIMES, default="torch",
                        help="time eager PyTorch (default) or both models exported to ONNX in onnxruntime")
    parser.add_argument("--int8", action="store_true",
                        help="onnxruntime only: time both models dynamically quantized to int8")
    parser.add_argument("--precision", choices=measure.BENCH_PRECISIONS, default="fp32",
                        help="torch only: both models in fp32 (default) or both under bf16 autocast")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs of each model")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs of each model")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.int8 and args.runtime != "onnxruntime":
        raise UserError("--int8 is onnxruntime's dynamic quantization: add --runtime onnxruntime")
    if args.precision != "fp32" and args.runtime != "torch":
        raise UserError(f"--precision {args.precision} is torch's autocast: drop it, or use --runtime torch "
                        "(onnxruntime times fp32, or int8 with --int8)")
    return args


def bench_main(argv: list[str]) -> int:
    """`python -m vitprune bench MODEL [...]`: interleaved latency, baseline vs variant."""
    args = _bench_args(argv)
    model, opts, is_ckpt = _build(args)
    if is_ckpt:
        if not opts and not registry.is_pruned(model):
            raise UserError("nothing to compare: the checkpoint is not pruned; give "
                            "--base-rate and/or --keep-heads/--keep-mlp")
        baseline = _checkpoint_base(args.model)
        variant = apply_variant(model, opts)
    else:
        if not opts:
            raise UserError("nothing to compare: give a variant with --base-rate R and/or "
                            "--keep-heads F --keep-mlp F (or --merge-r R)")
        baseline = model
        variant = apply_variant(copy.deepcopy(model), opts)

    base_info = _describe(baseline, args, {}, False)
    var_info = _describe(variant, args, opts, is_ckpt)
    shape = [args.batch_size] + var_info["input_shape"][1:]
    if args.runtime == "onnxruntime":
        ort = runtime_bench.compare(baseline, variant, batch_sizes=[args.batch_size], runtimes=("onnxruntime",),
                                    precisions=("int8" if args.int8 else "fp32",), warmup=args.warmup,
                                    repeats=args.repeats, threads=args.threads, img_size=args.img_size,
                                    macs=(base_info["macs"], var_info["macs"]))
        res = {**ort["rows"][0], "onnx_check": ort["onnx_check"], "variant_kind": ort["variant_kind"]}
    else:
        res = measure.benchmark(baseline, variant, shape, warmup=args.warmup, repeats=args.repeats,
                                threads=args.threads, baseline_macs=base_info["macs"],
                                variant_macs=var_info["macs"], precision=args.precision, progress=not args.json)
    res.update({"model": var_info["model"], "checkpoint": var_info["checkpoint"], "weights": var_info["weights"],
                "img_size": var_info["img_size"],
                "baseline_params": base_info["params"], "variant_params": var_info["params"]})
    res.update(_method_info(variant, opts))
    if args.json:
        print(json.dumps(res))
    else:
        print(format_bench(res))
    return 0
