"""Edge latency of a profile's saved models: torch beside onnxruntime, against the MAC ratio.

Notebook 05 calls `measure_runs` on the runs `results.collect_runs` found. For each pruning
method it takes the saved model whose MAC ratio is nearest `target_mac_ratio` (or every saved
model), exports it and the baseline to ONNX and times both interleaved in each runtime
(`runtime_bench.compare`). Speed-up = median baseline latency / median variant latency at one
batch size; MAC ratio = baseline MACs / variant MACs per image (MACs, not FLOPs, taken from the
runs' metrics so nothing is counted twice).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from vitprune import models
from vitprune.errors import UserError
from vitprune.measure import runtime_bench
from vitprune.study import results

RUNTIMES = ("torch", "onnxruntime")


def checkpoint_of(run: dict[str, Any]) -> Path | None:
    """The saved model of a run: the run folder's model.pt. A table row of a run ("<run>#<i>")
    has a model only if its metrics name one (`checkpoint`, relative to the run folder); a run's
    own `checkpoint` key is the weights it started from (e.g. official DeiT), not its result."""
    if "#" in run["run"]:
        rel = run["metrics"].get("checkpoint")
        path = Path(run["run_dir"]) / rel if rel else None
    else:
        path = Path(run["run_dir"]) / "model.pt"
    return path if path is not None and path.is_file() else None


def pick_runs(runs: list[dict[str, Any]], target_mac_ratio: float = 0.0) -> tuple[dict, list[dict]]:
    """(baseline run, pruned runs to time): per method the saved run whose MAC ratio is nearest
    `target_mac_ratio`; 0 takes every saved pruned run (never a control)."""
    saved = [r for r in runs if checkpoint_of(r) is not None and isinstance(r["metrics"].get("macs"), (int, float))]
    base = next((r for r in saved if r["metrics"].get("method") == "baseline"), None)
    if base is None:
        raise UserError("edge latency needs the baseline's saved model (01_deit_baseline/model.pt); "
                        "run notebook 01 first, or set edge_latency: false")
    # a control prunes nothing: nothing to time against the baseline
    pruned = [r for r in saved if r["metrics"].get("method") != "baseline" and not r["metrics"].get("control")]
    if target_mac_ratio <= 0:
        return base, pruned
    best: dict[str, tuple[float, dict]] = {}
    for r in pruned:
        ratio = base["metrics"]["macs"] / r["metrics"]["macs"]
        method = str(r["metrics"].get("method"))
        if method not in best or abs(ratio - target_mac_ratio) < abs(best[method][0] - target_mac_ratio):
            best[method] = (ratio, r)
    return base, [r for _, r in best.values()]


def measure_runs(runs: list[dict[str, Any]], *, batch_sizes: Sequence[int] = (1, 16), repeats: int = 5,
                 warmup: int = 2, threads: int | None = None, target_mac_ratio: float = 0.0) -> list[dict]:
    """One row per (run, runtime, batch size): speedup, mac_ratio, speedup_over_mac_ratio, the
    medians in ms and the variant's ONNX round trip (max |Δ logits| vs PyTorch)."""
    base, chosen = pick_runs(runs, target_mac_ratio)
    baseline = models.load_checkpoint(checkpoint_of(base))
    rows = []
    for run in chosen:
        m = run["metrics"]
        res = runtime_bench.compare(baseline, models.load_checkpoint(checkpoint_of(run)),
                                    batch_sizes=batch_sizes, runtimes=RUNTIMES, warmup=warmup,
                                    repeats=repeats, threads=threads, img_size=m.get("img_size"),
                                    macs=(int(base["metrics"]["macs"]), int(m["macs"])))
        for r in res["rows"]:
            rows.append({"run": run["run"], "label": m.get("label", run["run"]), "method": m.get("method"),
                         "runtime": r["runtime"], "precision": r["precision"], "batch_size": r["batch_size"],
                         "baseline_ms": r["baseline_ms"], "variant_ms": r["variant_ms"],
                         "speedup": r["speedup"], "mac_ratio": res["mac_ratio"],
                         "speedup_over_mac_ratio": r["speedup_over_mac_ratio"],
                         "onnx_max_abs_diff": res["onnx_check"]["variant"]["max_abs_diff"]})
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table, torch and onnxruntime side by side per run and batch; a
    speedup above results.SUSPECT_SPEEDUP x the MAC ratio is marked (suspect) rather than reported as a result."""
    keyed: dict[tuple, dict] = {}
    for r in rows:
        keyed.setdefault((r["label"], r["batch_size"]), {"mac_ratio": r["mac_ratio"],
                                                         "diff": r["onnx_max_abs_diff"]})[r["runtime"]] = r["speedup"]

    def cell(v, ratio):
        if v is None:
            return "—"
        return f"{v:.2f}x" + (" (suspect)" if v > results.SUSPECT_SPEEDUP * ratio else "")

    precisions = sorted({str(r.get("precision", "fp32")) for r in rows}) or ["fp32"]
    lines = [f"| model | batch | MAC ratio | torch speedup | onnxruntime speedup | ORT max abs diff logits |",
             "|---|---:|---:|---:|---:|---:|"]
    for (label, batch), v in keyed.items():
        lines.append(f"| {label} | {batch} | {v['mac_ratio']:.2f}x | {cell(v.get('torch'), v['mac_ratio'])} | "
                     f"{cell(v.get('onnxruntime'), v['mac_ratio'])} | {v['diff']:.1e} |")
    lines.append("")
    lines.append(f"Both models of a row at one precision ({', '.join(precisions)}), timed interleaved; "
                 f"(suspect): above {results.SUSPECT_SPEEDUP:g} x the MAC ratio, a measurement to explain, not a result.")
    return "\n".join(lines) + "\n"
