"""Interleaved latency of a baseline and its pruned variant in this process (torch), and the
timing loop onnxruntime comparisons share (`interleaved`)."""

from __future__ import annotations

import contextlib
import functools
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from vitprune import param_rules
from vitprune.progress import bar as progress_bar
from vitprune.errors import UserError

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
    """Time each callable in ``repeats`` rounds, the order reversed every round (ABBA...) and
    rotated every other round, so drift in machine load hits all alike, after ``warmup`` untimed
    calls of each. Each round calls every runner ``calls`` times after one untimed call (so no
    model is timed cold, just after the other evicted its weights from the caches; a deployed
    model runs warm), ``calls`` chosen from the slowest warm-up call so a round lasts at least
    ``min_round_ms`` (1 without warm-up). Returns ms per call per round, by name, and ``calls``. The one timing loop of `benchmark` (torch) and
    `deploy.runtime_bench.benchmark_onnx` (onnxruntime)."""
    if repeats < 1 or warmup < 0:
        raise UserError(f"need --repeats >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    names = list(runners)

    def timed(name: str, calls: int) -> float:
        runners[name]()  # untimed: the other model just ran, so this one starts with cold caches
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
        rounds = progress_bar(rounds, desc=desc, file=sys.stderr)
    for i in rounds:
        # ABBA, and with more than two runners each also moves one place every other round, so no
        # runner always sits next to the same one (per-round ratios pair runners of one round)
        shift = (i // 2) % len(names)
        order = names[shift:] + names[:shift]
        for name in (order if i % 2 == 0 else order[::-1]):
            times[name].append(timed(name, calls))
    return times, calls


def paired_speedup(baseline_ms: Sequence[float], variant_ms: Sequence[float]) -> float:
    """The median over rounds of baseline / variant latency within each round: the statistic every
    speedup here reports. Pairing by round cancels load that drifts between rounds (both models of
    a round see the same machine), which a ratio of two medians does not."""
    return statistics.median(b / v for b, v in zip(baseline_ms, variant_ms))


def time_modules(modules: dict[str, nn.Module], input_shape: Sequence[int], *, warmup: int = 2,
                 repeats: int = 10, threads: int | None = None, precision: str = "fp32",
                 progress: bool = False, min_round_ms: float = MIN_ROUND_MS) -> tuple[dict[str, list[float]], int, int, torch.device]:
    """Several torch modules timed in one `interleaved` loop: (ms per forward per round by name,
    calls per round, threads, device). All run in eval mode under ``torch.inference_mode`` on one
    random input of ``input_shape`` (batch first) on the first module's device, at one
    ``precision``: fp32, or bf16 autocast around all (the weights stay as they are). A module whose
    forward still carries a hidden autocast wrapper (`Accelerator.prepare`d in bf16 and not handed
    back) is refused: it would run at another precision than the one recorded. Threads are set to
    ``threads`` (default: current) for the loop, and threads and train/eval modes restored after."""
    if precision not in BENCH_PRECISIONS:
        raise UserError(f"benchmark precision must be one of {', '.join(BENCH_PRECISIONS)}, got {precision!r}")
    for name, model in modules.items():
        if autocast_wrapped(model):
            raise UserError(f"the {name} model's forward is wrapped (accelerate autocast left on it), so it would "
                            f"not run at {precision}; train it through vitprune.engine, which hands models back bare")
    old_threads = torch.get_num_threads()
    threads = int(threads or old_threads)
    modes = {name: model.training for name, model in modules.items()}
    param = next(next(iter(modules.values())).parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.randn(tuple(input_shape), device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    def call(model: nn.Module) -> None:
        with autocast:
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            times, calls = interleaved({name: functools.partial(call, model.eval()) for name, model in modules.items()},
                                       warmup=warmup, repeats=repeats, min_round_ms=min_round_ms,
                                       desc="bench (interleaved)" if progress else None)
    finally:
        torch.set_num_threads(old_threads)
        for name, model in modules.items():
            model.train(modes[name])
    return times, calls, threads, device


def benchmark(baseline: nn.Module, variant: nn.Module, input_shape: Sequence[int], *,
              warmup: int = 2, repeats: int = 10, threads: int | None = None,
              baseline_macs: int | None = None, variant_macs: int | None = None,
              precision: str = "fp32", progress: bool = False,
              min_round_ms: float = MIN_ROUND_MS) -> dict[str, Any]:
    """Median latency of ``baseline`` vs ``variant``, timed interleaved in this process
    (`time_modules`: eval mode, one input, one precision, `threads`).

    Reports medians in milliseconds per forward, ``speedup`` = `paired_speedup` (median of the
    per-round ratios) and, when MACs are given, ``mac_ratio`` = baseline/variant MACs and
    ``speedup_over_mac_ratio`` (1.0 = the speedup the arithmetic promises; well above 1 is a
    measurement to explain, not a result).
    """
    times, calls, threads, device = time_modules({"baseline": baseline, "variant": variant}, input_shape,
                                                 warmup=warmup, repeats=repeats, threads=threads,
                                                 precision=precision, progress=progress, min_round_ms=min_round_ms)
    base_ms = statistics.median(times["baseline"])
    var_ms = statistics.median(times["variant"])
    out: dict[str, Any] = {
        "baseline_ms": base_ms,
        "variant_ms": var_ms,
        "speedup": paired_speedup(times["baseline"], times["variant"]),
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
