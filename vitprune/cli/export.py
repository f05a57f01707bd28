"""`python -m vitprune export MODEL_OR_RUN_DIR OUT.onnx [variant options]`: write the model
(a timm name, optionally with --weights FILE, a vitprune checkpoint, or a run directory holding
model.pt, all resolved as `measure` resolves them), with the same variant options as
`measure`/`bench`, as an ONNX file with a dynamic batch axis (`vitprune.deploy.export`), then check it
against PyTorch in onnxruntime (max |delta logits|) and, with --int8, also write its dynamically
quantized copy.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from vitprune.cli import measure as cli_measure
from vitprune.errors import UserError
from vitprune.deploy import export

def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vitprune export",
        description="Export a model or pruned variant to ONNX (batch is a dynamic axis; token keep "
                    "counts and merges are static), and check it against PyTorch in onnxruntime.")
    cli_measure._add_model_args(parser)
    parser.add_argument("out", metavar="OUT.onnx", help="ONNX file to write")
    parser.add_argument("--exporter", choices=export.EXPORTERS, default="torchscript",
                        help="torch.onnx exporter (default torchscript: ~5x faster to export, same graph speed)")
    parser.add_argument("--opset", type=int, default=export.DEFAULT_OPSET)
    parser.add_argument("--int8", action="store_true",
                        help="also write OUT.int8.onnx (onnxruntime dynamic quantization; with --verify-on, "
                             "its top-1 too)")
    parser.add_argument("--no-check", action="store_true", help="skip the onnxruntime round trip")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="round-trip tolerance on logits, times max(1, max |logit|)")
    parser.add_argument("--verify-on", metavar="DATASET_CACHE",
                        help="also run every test image of this dataset cache (notebook 00's `dataset` folder) "
                             "through PyTorch and onnxruntime: differing predictions, max |delta logits|, both top-1")
    parser.add_argument("--per-class", type=int, default=0, metavar="N",
                        help="with --verify-on: a seeded class-balanced N images per class (0: the whole split; "
                             "e.g. 10 for 10k of ImageNet's 50k)")
    args = parser.parse_args(argv)
    model, opts, is_ckpt = cli_measure._build(args)  # a run directory becomes its model.pt
    model = cli_measure.apply_variant(model, opts)
    info = export.export_onnx(model, args.out, img_size=args.img_size, opset=args.opset, exporter=args.exporter)
    info["model"] = os.path.abspath(args.model) if is_ckpt else args.model
    if args.weights:
        info["weights"] = os.path.abspath(args.weights)
    if not args.no_check:
        info["check"] = export.verify(model, info["path"], img_size=args.img_size, atol=args.atol)
    if args.int8:
        out = Path(args.out)
        info["int8"] = export.quantize_int8(info["path"], out.with_name(out.stem + ".int8" + out.suffix))
    if args.verify_on:
        also = {"int8": info["int8"]["path"]} if args.int8 else {}
        info.update(_agreement_on(model, info["path"], args.verify_on, args.per_class, also))
    print(json.dumps(info) if args.json else _format(info))
    check = info.get("check")
    if check is not None and not check["ok"]:
        raise UserError(
            f"{check['mismatched_samples']} of {check['samples']} samples differ from PyTorch by more than "
            f"{check['tolerance']:.3g} (max |delta logits| {check['max_abs_diff']:.3g}); the file was written. "
            f"A random-init model with token selection can have tied token scores (see vitprune/deploy/export.py); "
            f"otherwise report it. --no-check skips the round trip")
    return 0


def _agreement_on(model, onnx_path: str, cache: str, per_class: int, also_score: dict) -> dict:
    """`export.agreement` over the evaluation split of a dataset cache (the notebooks' transforms)."""
    from vitprune import data  # datasets is slow to import: only with --verify-on

    if per_class < 0:
        raise UserError(f"--per-class must be >= 0 (0: every image), got {per_class}")
    splits = data.prepare_splits(data.load_cache(cache), model, eval_per_class=per_class)
    return {"verify_on": os.path.abspath(cache), "eval_split": splits.eval_name,
            **export.agreement(model, onnx_path, splits.eval_set, also_score=also_score)}


def _format(info: dict) -> str:
    lines = [f"wrote {info['path']} ({info['bytes'] / 1e6:.1f} MB; {info['kind']}, {info['exporter']} exporter, "
             f"opset {info['opset']}, input {info['input_shape'][1:]} x dynamic batch)"]
    if "check" in info:
        c = info["check"]
        lines.append(f"onnxruntime vs PyTorch: max |delta logits| {c['max_abs_diff']:.3g} over {c['samples']} images "
                     f"(batches {', '.join(map(str, c['by_batch']))}; max |logit| {c['max_abs_logit']:.3g}, "
                     f"tolerance {c['tolerance']:.3g}) -> {'ok' if c['ok'] else 'MISMATCH'}")
    if "images" in info:
        lines.append(f"{info['eval_split']} split of {info['verify_on']}: {info['differing_predictions']} of "
                     f"{info['images']} predictions differ; max |delta logits| {info['max_abs_logit_diff']:.3g}; "
                     f"top-1 {info['torch_top1']:.2f} % in PyTorch, {info['onnxruntime_top1']:.2f} % in onnxruntime"
                     + (f", {info['int8_top1']:.2f} % int8" if "int8_top1" in info else ""))
    if "selections" in info:
        lines.append(f"token choices ({info['selections']} rankings per image): other tokens kept in "
                     f"{info['differing_selections']} of {info['images']} images; smallest gap at a cut "
                     f"{info['min_cut_gap']:.3g}, runtimes' largest score difference {info['max_score_diff']:.3g}, "
                     f"{info['images_below_score_diff']} images with a gap below it")
    if "int8" in info:
        lines.append(f"wrote {info['int8']['path']} ({info['int8']['bytes'] / 1e6:.1f} MB, int8 dynamic quantization)")
    return "\n".join(lines)
