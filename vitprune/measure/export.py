"""ONNX export of every model kind vitprune builds, and the round-trip check in onnxruntime.

Kinds (any combination a checkpoint or `measure.apply_variant` produces):
baseline timm ViT; DynamicViT (`token_pruning.attach`, eval mode = the gathered forward: the
score predictors and the top-k gather are inside the graph); the physically block-pruned
dense model (`block_pruning.remove` / `apply_spec`); both orders of the combination (the
exported graph only sees the final module structure); the training-free EViT-style comparator
(`training_free.apply`); ToMe-style merging (`merging.apply`).

Shapes. Keep counts and merge counts are static: they are Python ints fixed by the schedule
and the model's input size, so each top-k has a constant k and every later tensor has a known
token count. The batch is the one dynamic axis ("batch"), so one file serves batch 1 and 16.

Exporter choice. torch 2.14's `torch.onnx.export` defaults to the dynamo (torch.export)
exporter; both it and the TorchScript tracer export the top-k gather with a dynamic batch and
give the same onnxruntime latency on DeiT-S (2.08 vs 2.09 s at batch 16, measured). We default
to the TorchScript exporter (`exporter="torchscript"`, dynamic_axes) because it exports ~5x
faster (DeiT-S: ~4 s vs ~20 s; vit_fmnist: 1.2 s vs 9 s), which keeps the round-trip tests in
the default suite cheap; `exporter="dynamo"` (Dim("batch")) is one argument away and is tested
too, for when torch drops the tracer. Either way the graph is traced once at batch 2 and the
round trip (`verify`) checks it at other batch sizes, so a batch size baked into the graph
would show up there.

Differences to PyTorch are float rounding (~1e-6 on logits) except where two tokens' scores
tie within rounding: top-k (or ToMe's matching) may then pick the other token. Random-init
models have nearly uniform scores and do tie; trained models rarely do. `verify` reports the
max |delta logits| and how many samples exceed the tolerance.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import pruning_state, reducers
from vitprune.progress import bar as progress_bar
from vitprune.torchutil import unwrap

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 17  # LayerNormalization is a single op from opset 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TRACE_BATCH = 2  # not 1: a tracer must not see a broadcastable batch dimension
# attributes the pruning modules set on a patched model
KIND_ATTRS = (("block", pruning_state.BLOCK_SPEC_ATTR), *((r.name, r.state_attr) for r in reducers.REDUCERS.values()))


def model_kind(model: nn.Module) -> str:
    """'baseline', or the pruning methods on the model joined by '+' (e.g. 'block+dynamicvit')."""
    bare = unwrap(model)
    kinds = [name for name, attr in KIND_ATTRS if getattr(bare, attr, None)]
    return "+".join(kinds) if kinds else "baseline"


def export_onnx(model: nn.Module, path: str | os.PathLike, *, img_size: int | None = None,
                opset: int = DEFAULT_OPSET, exporter: str = "torchscript") -> dict[str, Any]:
    """Write `model` (eval mode, CPU, float32) as an ONNX file with a dynamic batch axis.

    Input "images" [batch, C, H, W] at the model's input size (`img_size` overrides), output
    "logits" [batch, classes]. Written to a temporary file, checked with `onnx.checker`, then
    moved into place. Returns {"path", "kind", "exporter", "opset", "input_shape" (batch 1),
    "bytes"}; the model's train/eval mode is restored.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise UserError(f"unknown ONNX exporter {exporter!r}; use one of {', '.join(EXPORTERS)}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise UserError(f"opset must be an int >= {DEFAULT_OPSET} (LayerNormalization), got {opset!r}")
    bare = unwrap(model)
    param = next(bare.parameters(), None)
    if param is not None and (param.device.type != "cpu" or param.dtype != torch.float32):
        raise UserError(f"export a float32 CPU model (got {param.dtype} on {param.device}); "
                        "call model.float().cpu() first")
    shape = measure.input_shape_for(bare, img_size)
    example = torch.randn(TRACE_BATCH, *shape[1:])
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a directory; give the ONNX file to write, e.g. {path / 'model.onnx'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    was_training = bare.training
    bare.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # tracer notes on Python-int shapes (static keep counts, on purpose) and the
            # exporter-choice notice (see the module docstring)
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1, max=65536)
                torch.onnx.export(bare, (example,), str(tmp), dynamo=True, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_shapes=({0: batch},), verbose=False, external_data=False)
            else:
                torch.onnx.export(bare, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - one clear line instead of an exporter traceback
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"ONNX export of the {model_kind(bare)} model failed ({exporter} exporter, "
                        f"opset {opset}): {first}") from exc
    finally:
        bare.train(was_training)
        if tmp.exists():
            tmp.unlink()
    return {"path": str(path), "kind": model_kind(bare), "exporter": exporter, "opset": opset,
            "input_shape": list(shape), "bytes": path.stat().st_size}


def session(path: str | os.PathLike, threads: int | None = None):
    """An onnxruntime CPU InferenceSession on `path`: `threads` intra-op threads (default:
    onnxruntime's choice), one inter-op thread, sequential execution, all graph optimisations,
    no spin-waiting between runs."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}; write it with `python -m vitprune export`")
    opts = ort.SessionOptions()
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be >= 1, got {threads}")
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    # Idle intra-op threads spin-wait by default; with two sessions timed in turn on few cores, the
    # one that just ran keeps its cores busy and slows the other (speedups moved 0.7-1.8x between
    # identical runs here). Sleeping threads make interleaved timings comparable.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"onnxruntime cannot load {path}: {first}") from exc


def verify(model: nn.Module, path: str | os.PathLike, batch_sizes: Sequence[int] = (1, 4), *,
           img_size: int | None = None, seed: int = 0, atol: float = 1e-4,
           threads: int | None = None) -> dict[str, Any]:
    """Compare the ONNX file's logits with the PyTorch model's on random N(0, 1) images.

    Returns {"max_abs_diff" (over every batch), "by_batch" {batch: max |delta|},
    "max_abs_logit", "atol", "samples", "mismatched_samples" (max |delta| of the sample's logits
    > atol * max(1, max |logit|)), "ok"}. See the module docstring on near-tied token scores.
    """
    bare = unwrap(model)
    shape = measure.input_shape_for(bare, img_size)
    sess = session(path, threads)
    gen = torch.Generator().manual_seed(seed)
    by_batch: dict[int, float] = {}
    worst_logit, mismatched, samples = 0.0, 0, 0
    per_sample: list[np.ndarray] = []
    was_training = bare.training
    bare.eval()
    try:
        for b in batch_sizes:
            if isinstance(b, bool) or not isinstance(b, int) or b < 1:
                raise UserError(f"batch sizes must be positive ints, got {b!r}")
            ref, out = _both_logits(bare, sess, torch.randn(b, *shape[1:], generator=gen))
            delta = np.abs(out - ref).reshape(b, -1).max(axis=1)
            per_sample.append(delta)
            by_batch[b] = float(delta.max())
            worst_logit = max(worst_logit, float(np.abs(ref).max()))
            samples += b
    finally:
        bare.train(was_training)
    limit = atol * max(1.0, worst_logit)
    mismatched = int(sum(int((d > limit).sum()) for d in per_sample))
    worst = max(by_batch.values())
    return {"max_abs_diff": worst, "by_batch": by_batch, "max_abs_logit": worst_logit, "atol": atol,
            "tolerance": limit, "samples": samples, "mismatched_samples": mismatched,
            "ok": mismatched == 0}


def _both_logits(bare: nn.Module, sess, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch model's and the ONNX session's logits of one batch (the model in eval mode)."""
    with torch.no_grad():
        ref = bare(images).numpy()
    out = sess.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0]
    if out.shape != ref.shape:
        raise UserError(f"ONNX output shape {out.shape} != PyTorch {ref.shape} at batch {len(images)}: "
                        f"the file does not belong to this model (or its batch axis is not dynamic)")
    return ref, out


def agreement(model: nn.Module, path: str | os.PathLike, dataset, *, batch_size: int = 250,
              threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every (image, label) of `dataset` (the model's transforms applied, e.g. a cache's test
    split through `data.prepare_splits`) through the PyTorch model and the ONNX file at `path`.
    Returns {"images", "differing_predictions" (argmax differs), "max_abs_logit_diff",
    "torch_top1", "onnxruntime_top1" (percent)}: what a deployer needs to know, on real images,
    beyond `verify`'s random ones."""
    bare = unwrap(model)
    sess = session(path, threads)
    was_training = bare.training
    bare.eval()
    images = differing = torch_hits = ort_hits = 0
    worst = 0.0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        for x, y in progress_bar(loader, desc="onnxruntime vs torch", unit="batch", disable=not progress):
            ref, out = _both_logits(bare, sess, x)
            worst = max(worst, float(np.abs(out - ref).max()))
            ref_pred, ort_pred, labels = ref.argmax(1), out.argmax(1), y.numpy()
            differing += int((ref_pred != ort_pred).sum())
            torch_hits += int((ref_pred == labels).sum())
            ort_hits += int((ort_pred == labels).sum())
            images += len(labels)
    finally:
        bare.train(was_training)
    if images == 0:
        raise UserError("the evaluation set is empty: nothing to compare")
    return {"images": images, "differing_predictions": differing, "max_abs_logit_diff": worst,
            "torch_top1": 100.0 * torch_hits / images, "onnxruntime_top1": 100.0 * ort_hits / images}


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, Any]:
    """onnxruntime dynamic quantization: int8 weights of MatMul/Gemm, activations quantized per
    batch at run time (`onnxruntime.quantization.quantize_dynamic`, QInt8 weights). Convolutions
    and everything else stay float32. Returns {"path", "bytes", "source"}."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise UserError(f"ONNX file not found: {src}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    quiet = logging.getLogger()  # onnxruntime.quantization logs a pre-processing hint on the root logger
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8,
                             op_types_to_quantize=["MatMul", "Gemm"])
        os.replace(tmp, dst)
    finally:
        quiet.setLevel(level)
        if tmp.exists():
            tmp.unlink()
    return {"path": str(dst), "bytes": dst.stat().st_size, "source": str(src)}
