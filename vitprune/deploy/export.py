"""ONNX export of every model kind vitprune builds, and the round-trip check in onnxruntime.

Kinds (any combination a checkpoint or `registry.apply_all` produces):
baseline timm ViT; DynamicViT (`dynamicvit.attach`, eval mode = the gathered forward: the
score predictors and the top-k gather are inside the graph); the physically block-pruned
dense model (`block_pruning.remove` / `apply_spec`); both orders of the combination (the
exported graph only sees the final module structure); the training-free CLS-attention top-k comparator
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

Differences to PyTorch are float rounding (~1e-6 on logits). Which tokens a model keeps or
merges is ranked on rounded integer keys (`methods.selection`), so ties and near-ties go the same
way in both runtimes; a choice can still differ where a score sits within float noise of a rounding
boundary at the cut. `agreement` measures that on real images (how many images, how close the
closest cut came); `verify` checks the logits on random ones.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from vitprune import measure
from vitprune.errors import UserError
from vitprune.methods import registry, selection
from vitprune.progress import bar as progress_bar
from vitprune.torchutil import unwrap

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_OPSET = 17  # LayerNormalization is a single op from opset 17
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
TRACE_BATCH = 2  # not 1: a tracer must not see a broadcastable batch dimension


def model_kind(model: nn.Module) -> str:
    """'baseline', or the pruning methods on the model joined by '+' (e.g. 'block+dynamicvit')."""
    return "+".join(m.name for m in registry.applied(model)) or "baseline"


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
              threads: int | None = None, progress: bool = True,
              also_score: dict[str, str | os.PathLike] | None = None, selections: bool = True) -> dict[str, Any]:
    """Run every (image, label) of `dataset` (the model's transforms applied, e.g. a cache's test
    split through `data.prepare_splits`) through the PyTorch model and the ONNX file at `path`.

    Returns {"images", "differing_predictions" (argmax differs), "max_abs_logit_diff",
    "torch_top1", "onnxruntime_top1" (percent)} and, for a model that selects tokens
    (`methods.selection`), whether both runtimes chose the same tokens: "selections" (rankings
    per image), "differing_selections" (images where any ranking chose other tokens),
    "min_cut_gap" (smallest raw-score gap between the last kept and the first dropped token, over
    every image and ranking), "max_score_diff" (largest |score difference| between the runtimes,
    over rankings whose inputs still agree) and "images_below_score_diff" (images whose smallest
    gap is below that difference: where an unrounded top-k could have flipped). `also_score`
    {name: ONNX file} adds "<name>_top1" for other files of the same model (e.g. its int8 copy),
    scored on the same images in the same pass. `selections=False` skips the token-choice check
    (a third onnxruntime pass)."""
    bare = unwrap(model)
    sess = session(path, threads)
    others = {name: session(p, threads) for name, p in (also_score or {}).items()}
    was_training = bare.training
    bare.eval()
    images = differing = 0
    hits = {"torch": 0, "onnxruntime": 0, **{name: 0 for name in others}}
    worst = 0.0
    tracer: _SelectionTracer | None = None
    try:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
        with tempfile.TemporaryDirectory(prefix="vitprune-selections-") as tmp:
            for x, y in progress_bar(loader, desc="onnxruntime vs torch", unit="batch", disable=not progress):
                if tracer is None and selections:
                    tracer = _SelectionTracer(bare, Path(tmp) / "selections.onnx", x, threads)
                ref, out = _both_logits(bare, sess, x)
                worst = max(worst, float(np.abs(out - ref).max()))
                labels = y.numpy()
                preds = {"torch": ref.argmax(1), "onnxruntime": out.argmax(1)}
                for name, other in others.items():
                    preds[name] = other.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].argmax(1)
                differing += int((preds["torch"] != preds["onnxruntime"]).sum())
                for name, pred in preds.items():
                    hits[name] += int((pred == labels).sum())
                if tracer is not None:
                    tracer.compare(x)
                images += len(labels)
    finally:
        bare.train(was_training)
    if images == 0:
        raise UserError("the evaluation set is empty: nothing to compare")
    result = {"images": images, "differing_predictions": differing, "max_abs_logit_diff": worst,
              **{f"{name}_top1": 100.0 * n / images for name, n in hits.items()}}
    if tracer is not None and tracer.rankings:
        result.update(tracer.summary())
    return result


class _SelectionTracer:
    """The model's token rankings in both runtimes, image by image: a second ONNX graph of the same
    model that also returns every ranking's raw scores and chosen indices (`selection.recording`),
    against the same rankings recorded in PyTorch."""

    def __init__(self, bare: nn.Module, path: Path, example: torch.Tensor, threads: int | None):
        self.model = bare
        with torch.no_grad(), selection.recording() as records:
            bare(example[:1])
        self.rankings = len(records)
        self.cut_gaps: list[np.ndarray] = []  # per image: the smallest gap over its rankings
        self.differs: list[np.ndarray] = []
        self.max_score_diff = 0.0
        if not self.rankings:
            return
        names = [OUTPUT_NAME] + [f"score_{i}" for i in range(self.rankings)] + [f"indices_{i}" for i in range(self.rankings)]
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_WithSelections(bare).eval(), (example[:TRACE_BATCH],), str(path), dynamo=False,
                              opset_version=DEFAULT_OPSET, input_names=[INPUT_NAME], output_names=names,
                              dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *names]})
        self.sess = session(path, threads)

    def compare(self, x: torch.Tensor) -> None:
        if not self.rankings:
            return
        with torch.no_grad(), selection.recording() as records:
            self.model(x)  # only the rankings: the logits are compared on the deployed file
        outs = self.sess.run(None, {INPUT_NAME: x.numpy()})
        ort_scores, ort_indices = outs[1:1 + self.rankings], outs[1 + self.rankings:]
        b = len(x)
        agree_so_far = np.ones(b, dtype=bool)
        gap = np.full(b, np.inf)
        for rec, ort_score, ort_idx in zip(records, ort_scores, ort_indices):
            score = rec.score.float().numpy()
            diff = np.abs(score - ort_score).reshape(b, -1).max(axis=1)
            if agree_so_far.any():  # a ranking's inputs match only while every earlier one agreed
                self.max_score_diff = max(self.max_score_diff, float(diff[agree_so_far].max()))
            same = (rec.indices.numpy() == ort_idx).reshape(b, -1).all(axis=1)
            agree_so_far &= same
            gap = np.minimum(gap, selection.cut_gaps(rec.score, rec.k).reshape(b, -1).min(dim=1).values.numpy())
        self.differs.append(~agree_so_far)
        self.cut_gaps.append(gap)

    def summary(self) -> dict[str, Any]:
        gaps = np.concatenate(self.cut_gaps)
        return {"selections": self.rankings, "differing_selections": int(np.concatenate(self.differs).sum()),
                "min_cut_gap": float(gaps.min()), "max_score_diff": self.max_score_diff,
                "images_below_score_diff": int((gaps < self.max_score_diff).sum())}


class _WithSelections(nn.Module):
    """`model`'s logits followed by every ranking's raw scores, then its chosen indices."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        with selection.recording() as records:
            logits = self.model(images)
        return (logits, *[r.score for r in records], *[r.indices for r in records])


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
