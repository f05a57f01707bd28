"""Latency of baseline vs pruned variant in onnxruntime (fp32 or int8), beside PyTorch's.

Same protocol as `measure.benchmark` (DESIGN.md, measurement conventions): both models get the
same random input and one timing loop (`measure.interleaved`: `warmup` untimed runs each, then
`repeats` rounds alternating which goes first, ABBA..., so load drift on a shared machine hits
both alike, each round long enough for the clock); medians in milliseconds per run and their
ratio `speedup` = baseline / variant. `mac_ratio` = baseline / variant MACs per image (`measure.count`, fvcore + SDPA handle), so
`speedup_over_mac_ratio` = 1 is the speedup the arithmetic promises.

int8: onnxruntime dynamic quantization of both files (`export.quantize_int8`); the MAC counts
are those of the float model (the same multiply-accumulates, done in int8).
"""

from __future__ import annotations

import functools
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vitprune import measure
from vitprune.errors import UserError
from vitprune.deploy import export

RUNTIMES = ("torch", "onnxruntime")
PRECISIONS = ("fp32", "int8")


def benchmark_onnx(baseline_path: str | os.PathLike, variant_path: str | os.PathLike,
                   input_shape: Sequence[int], *, warmup: int = 2, repeats: int = 10,
                   threads: int | None = None, baseline_macs: int | None = None,
                   variant_macs: int | None = None, seed: int = 0,
                   min_round_ms: float = measure.MIN_ROUND_MS) -> dict[str, Any]:
    """Median onnxruntime latency of two ONNX files (input "images", batch first), interleaved.

    Returns the keys of `measure.benchmark` ("baseline_ms", "variant_ms", "speedup", the runs,
    "batch_size", "threads", ... and with MACs "mac_ratio", "speedup_over_mac_ratio") plus
    "runtime": "onnxruntime" and its version. `threads`: intra-op threads of each session
    (default torch's current thread count, so both runtimes get the same cores)."""
    import onnxruntime as ort

    threads = int(threads or torch.get_num_threads())
    times, calls = time_onnx_files({"baseline": baseline_path, "variant": variant_path}, input_shape, warmup=warmup,
                                   repeats=repeats, threads=threads, seed=seed, min_round_ms=min_round_ms)
    base_ms, var_ms = statistics.median(times["baseline"]), statistics.median(times["variant"])
    out: dict[str, Any] = {
        "runtime": "onnxruntime", "onnxruntime_version": ort.__version__,
        "baseline_ms": base_ms, "variant_ms": var_ms, "speedup": measure.paired_speedup(times["baseline"], times["variant"]),
        "baseline_ms_runs": times["baseline"], "variant_ms_runs": times["variant"],
        "batch_size": int(input_shape[0]), "input_shape": list(input_shape), "threads": threads,
        "warmup": warmup, "repeats": repeats, "calls_per_round": calls, "device": "cpu",
    }
    if baseline_macs and variant_macs:
        out.update(baseline_macs=int(baseline_macs), variant_macs=int(variant_macs),
                   mac_ratio=baseline_macs / variant_macs)
        out["speedup_over_mac_ratio"] = out["speedup"] / out["mac_ratio"]
    return out


def time_onnx_files(paths: dict[str, str | os.PathLike], input_shape: Sequence[int], *, warmup: int = 2,
                    repeats: int = 10, threads: int | None = None, seed: int = 0,
                    min_round_ms: float = measure.MIN_ROUND_MS) -> tuple[dict[str, list[float]], int]:
    """onnxruntime latency of several ONNX files on one random input, interleaved in one loop
    (`measure.interleaved`): (ms per run per round by name, calls per round). Pair any two with
    `measure.paired_speedup` (e.g. an int8 variant against the fp32 baseline)."""
    threads = int(threads or torch.get_num_threads())
    sessions = {name: export.session(path, threads) for name, path in paths.items()}
    feeds = {export.INPUT_NAME: np.random.default_rng(seed).standard_normal(tuple(input_shape), dtype=np.float32)}
    return measure.interleaved({name: functools.partial(s.run, None, feeds) for name, s in sessions.items()},
                               warmup=warmup, repeats=repeats, min_round_ms=min_round_ms)


def compare(baseline: nn.Module, variant: nn.Module, *, batch_sizes: Sequence[int] = (1, 16),
            runtimes: Sequence[str] = RUNTIMES, precisions: Sequence[str] = ("fp32",), warmup: int = 2,
            repeats: int = 10, threads: int | None = None, img_size: int | None = None,
            workdir: str | os.PathLike | None = None, check: bool = True,
            macs: tuple[int, int] | None = None) -> dict[str, Any]:
    """Count, export and time `baseline` vs `variant` in each runtime at each batch size.

    torch runs `measure.benchmark` on the modules; onnxruntime exports both (`export.export_onnx`,
    into `workdir` or a temporary directory) and times each of `precisions` ("fp32"; "int8" =
    both files dynamically quantized, onnxruntime only). With `check`, each fp32 file's round trip
    (`export.verify`, batch 1 and 2) is recorded under "onnx_check". Returns {"baseline_macs",
    "variant_macs", "mac_ratio", "baseline_kind", "variant_kind", "rows": [{"runtime",
    "precision", "batch_size", "baseline_ms", "variant_ms", "speedup", "speedup_over_mac_ratio",
    ...}], "onnx_check"?}. `macs` (baseline, variant MACs per image) skips the counting when the
    caller has counted already.
    """
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad or not runtimes:
        raise UserError(f"unknown runtime {bad or runtimes}; use one or more of {', '.join(RUNTIMES)}")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise UserError(f"unknown precision {bad or precisions}; use one or more of {', '.join(PRECISIONS)}")
    int8 = "int8" in precisions
    if int8 and "onnxruntime" not in runtimes:
        raise UserError("int8 timing is onnxruntime dynamic quantization: add the onnxruntime runtime")
    for b in batch_sizes:
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise UserError(f"batch sizes must be positive ints, got {b!r}")
    if macs is None:
        macs = (measure.count(baseline, img_size=img_size)["macs"], measure.count(variant, img_size=img_size)["macs"])
    per_image = list(measure.input_shape_for(variant, img_size)[1:])
    out: dict[str, Any] = {
        "baseline_kind": export.model_kind(baseline), "variant_kind": export.model_kind(variant),
        "baseline_macs": int(macs[0]), "variant_macs": int(macs[1]), "mac_ratio": macs[0] / macs[1],
        "baseline_params": measure.count_params(baseline), "variant_params": measure.count_params(variant),
        "precisions": list(precisions), "rows": [],
    }
    with tempfile.TemporaryDirectory(prefix="vitprune-ort-") as tmp:
        root = Path(workdir) if workdir is not None else Path(tmp)
        files: dict[str, tuple[str, str]] = {}
        if "onnxruntime" in runtimes:
            fp32 = tuple(export.export_onnx(m, root / f"{name}.onnx", img_size=img_size)["path"]
                         for name, m in (("baseline", baseline), ("variant", variant)))
            if "fp32" in precisions:
                files["fp32"] = fp32
            if check:
                out["onnx_check"] = {name: _summary(export.verify(m, p, (1, 2), img_size=img_size))
                                     for name, m, p in (("baseline", baseline, fp32[0]),
                                                        ("variant", variant, fp32[1]))}
            if int8:
                files["int8"] = tuple(export.quantize_int8(p, root / f"{name}.int8.onnx")["path"]
                                      for name, p in zip(("baseline", "variant"), fp32))
        for b in batch_sizes:
            shape = [b, *per_image]
            if "torch" in runtimes and "fp32" in precisions:
                res = measure.benchmark(baseline, variant, shape, warmup=warmup, repeats=repeats,
                                        threads=threads, baseline_macs=macs[0], variant_macs=macs[1])
                out["rows"].append({"runtime": "torch", "precision": "fp32", **res})
            for precision, (bpath, vpath) in files.items():
                res = benchmark_onnx(bpath, vpath, shape, warmup=warmup, repeats=repeats,
                                     threads=threads, baseline_macs=macs[0], variant_macs=macs[1])
                out["rows"].append({**res, "precision": precision})
    return out


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    return {k: res[k] for k in ("max_abs_diff", "max_abs_logit", "mismatched_samples", "samples", "ok")}


def format_rows(result: dict[str, Any]) -> str:
    """A small text table of `compare`'s rows: runtime, precision, batch, ms, speedup, ratio."""
    lines = [f"MAC ratio {result['mac_ratio']:.3f}x ({result['baseline_kind']} -> {result['variant_kind']})",
             f"{'runtime':<12} {'prec':<5} {'batch':>5} {'baseline ms':>12} {'variant ms':>11} "
             f"{'speedup':>8} {'speedup/MAC':>11}"]
    for r in result["rows"]:
        lines.append(f"{r['runtime']:<12} {r['precision']:<5} {r['batch_size']:>5} {r['baseline_ms']:>12.2f} "
                     f"{r['variant_ms']:>11.2f} {r['speedup']:>7.3f}x {r['speedup_over_mac_ratio']:>11.3f}")
    return "\n".join(lines)
