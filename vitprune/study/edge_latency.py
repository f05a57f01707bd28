"""Edge numbers of a profile's saved models: what a deployer asks of each exported file.

Notebook 05 calls `measure_runs` on the runs `results.collect_runs` found. Per pruning method it
takes the configuration whose MAC ratio is nearest `target_mac_ratio` (or every saved one), and
for *every seed's* model of it (none timed once for all: each file is its own measurement):

- exports it to ONNX, fp32 and dynamically quantized int8 (`export.quantize_int8`), beside the
  baseline's two files;
- scores both files on the test images next to PyTorch (`export.agreement`): top-1 in fp32 and
  int8, predictions that differ from PyTorch's (the token-choice check is the CLI's
  `export --verify-on`: a third pass per model);
- times it against the baseline at each batch size, in torch and in onnxruntime: the baseline and
  every seed's model (fp32, and int8 in onnxruntime) in one interleaved loop per configuration
  (`measure.time_modules` / `runtime_bench.time_onnx_files`, every turn warmed by an untimed
  call), so the seeds see the same machine. Speedup = median over rounds of the per-round latency
  ratio (`measure.paired_speedup`), against the *fp32* baseline of the same runtime, so the int8 column
  is what int8 saves in all; MAC ratio = baseline / variant MACs per image (MACs, not FLOPs).

`markdown` folds the seeds of a configuration: the median speedup, and the spread of the seeds'
speedups ((max - min) / median): seeds share an architecture, so the spread is timing noise.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from vitprune import data, measure, models
from vitprune.errors import UserError
from vitprune.deploy import export, runtime_bench
from vitprune.study import results, run_folders


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
    """(baseline run, pruned runs to measure): per method the configuration (label) whose MAC
    ratio is nearest `target_mac_ratio`, with every seed's saved run of it; 0 takes every saved
    pruned run (never a control)."""
    saved = [r for r in runs if checkpoint_of(r) is not None and isinstance(r["metrics"].get("macs"), (int, float))]
    base = next((r for r in saved if r["metrics"].get("method") == "baseline"), None)
    if base is None:
        raise UserError("edge latency needs the baseline's saved model (01_deit_baseline/model.pt); "
                        "run notebook 01 first, or set edge_latency: false")
    # a control prunes nothing: nothing to time against the baseline
    pruned = [r for r in saved if r["metrics"].get("method") != "baseline" and not r["metrics"].get("control")]
    if target_mac_ratio <= 0:
        return base, pruned
    best: dict[str, tuple[float, str]] = {}
    for r in pruned:
        ratio = base["metrics"]["macs"] / r["metrics"]["macs"]
        method, label = str(r["metrics"].get("method")), _label(r)
        if method not in best or abs(ratio - target_mac_ratio) < abs(best[method][0] - target_mac_ratio):
            best[method] = (ratio, label)
    labels = {label for _, label in best.values()}
    return base, [r for r in pruned if _label(r) in labels]


def _label(run: dict[str, Any]) -> str:
    return str(run["metrics"].get("label", run["run"]))


def test_cache(runs_root: str, profile: str, run_dir: str = "") -> str:
    """The dataset cache notebook 00 wrote for this profile (the lab's own when a lab run asks and
    one finished): the images every exported file is scored on."""
    folder = run_folders.upstream_run_dir({"runs_root": runs_root, "profile": profile, "run_dir": run_dir},
                                          "00_data_cache", {})
    return str(results.read_metrics(folder)["cache_path"])


def measure_runs(runs: list[dict[str, Any]], *, cache: str | None = None, eval_per_class: int = 0,
                 batch_sizes: Sequence[int] = (1, 16),
                 repeats: int = 15, warmup: int = 2, threads: int | None = None,
                 target_mac_ratio: float = 0.0, progress: bool = True) -> dict[str, Any]:
    """Export, score (on the evaluation split of the dataset `cache`, when given: `eval_per_class`
    images per class, 0 all, with the baseline's transforms) and time the models `pick_runs`
    chooses. Returns {"rows": one per (run, runtime, precision, batch): speedup,
    mac_ratio, speedup_over_mac_ratio, medians in ms; "accuracy": one per file's model (the
    baseline first): `export.agreement`'s fields with "int8_top1"; "threads", "repeats",
    "statistic", "wall_time_s"}."""
    start = time.perf_counter()
    base, chosen = pick_runs(runs, target_mac_ratio)
    threads = int(threads or 1)
    base_macs = int(base["metrics"]["macs"])
    configurations: dict[str, list[dict]] = {}
    for run in chosen:
        configurations.setdefault(_label(run), []).append(run)
    rows: list[dict] = []
    accuracy: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="vitprune-edge-") as tmp:
        baseline = models.load_checkpoint(checkpoint_of(base))
        img_size = base["metrics"].get("img_size")
        base_files = _export_both(baseline, Path(tmp) / "baseline", img_size)
        eval_set = None
        if cache:
            eval_set = data.prepare_splits(data.load_cache(cache), baseline, eval_per_class=eval_per_class).eval_set
            accuracy.append(_score(base, baseline, base_files, eval_set, threads, progress))
        per_image = list(measure.input_shape_for(baseline, img_size)[1:])
        base_facts = {"run": base["run"], "label": _label(base), "method": "baseline", "seed": None,
                      "mac_ratio": 1.0, "onnx_max_abs_diff": None}
        for b in batch_sizes:  # what int8 alone saves
            times, _ = runtime_bench.time_onnx_files({"baseline": base_files["fp32"], "int8": base_files["int8"]},
                                                     [b, *per_image], warmup=warmup, repeats=repeats, threads=threads)
            rows.append(_row(base_facts, "onnxruntime", "int8", b, times["baseline"], times["int8"]))
        for label, seeds in configurations.items():
            # every seed's model is its own runner, and all of a configuration's seeds share one loop with
            # the baseline: the seeds then see the same machine, so their spread is the loop's noise only
            variants, files, facts = {}, {}, {}
            for i, run in enumerate(seeds):
                m = run["metrics"]
                variants[i] = models.load_checkpoint(checkpoint_of(run))
                files[i] = _export_both(variants[i], Path(tmp) / f"{_stem(run)}", img_size)
                check = export.verify(variants[i], files[i]["fp32"], (1, 2), img_size=img_size, threads=threads)
                if eval_set is not None:
                    accuracy.append(_score(run, variants[i], files[i], eval_set, threads, progress))
                facts[i] = {"run": run["run"], "label": label, "method": m.get("method"), "seed": m.get("seed"),
                            "mac_ratio": base_macs / int(m["macs"]), "onnx_max_abs_diff": check["max_abs_diff"]}
            for b in batch_sizes:
                shape = [b, *per_image]
                times, *_ = measure.time_modules({"baseline": baseline, **{str(i): v for i, v in variants.items()}},
                                                 shape, warmup=warmup, repeats=repeats, threads=threads)
                for i in variants:
                    rows.append(_row(facts[i], "torch", "fp32", b, times["baseline"], times[str(i)]))
                onnx = {"baseline": base_files["fp32"]}
                for i in variants:
                    onnx.update({f"{i}/fp32": files[i]["fp32"], f"{i}/int8": files[i]["int8"]})
                times, _ = runtime_bench.time_onnx_files(onnx, shape, warmup=warmup, repeats=repeats, threads=threads)
                for i in variants:
                    for precision in ("fp32", "int8"):
                        rows.append(_row(facts[i], "onnxruntime", precision, b, times["baseline"],
                                         times[f"{i}/{precision}"]))
    return {"rows": rows, "accuracy": accuracy, "threads": threads, "repeats": repeats,
            "statistic": "median over rounds of the per-round latency ratio, against the fp32 baseline",
            "wall_time_s": time.perf_counter() - start}


def _stem(run: dict[str, Any]) -> str:
    return run["run"].replace("/", "_").replace("#", "_")


def _export_both(model, stem: Path, img_size) -> dict[str, str]:
    fp32 = export.export_onnx(model, stem.with_suffix(".onnx"), img_size=img_size)["path"]
    return {"fp32": fp32, "int8": export.quantize_int8(fp32, stem.with_suffix(".int8.onnx"))["path"]}


def _score(run: dict, model, files: dict[str, str], eval_set, threads: int, progress: bool) -> dict[str, Any]:
    res = export.agreement(model, files["fp32"], eval_set, threads=threads, progress=progress,
                           also_score={"int8": files["int8"]}, selections=False)
    m = run["metrics"]
    return {"run": run["run"], "label": _label(run), "method": m.get("method"), "seed": m.get("seed"), **res}


def _row(facts: dict, runtime: str, precision: str, batch: int, base_ms: list[float], var_ms: list[float]) -> dict:
    speedup = measure.paired_speedup(base_ms, var_ms)
    return {**facts, "runtime": runtime, "precision": precision, "batch_size": batch,
            "baseline_ms": statistics.median(base_ms), "variant_ms": statistics.median(var_ms),
            "speedup": speedup, "speedup_over_mac_ratio": speedup / facts["mac_ratio"]}


def fold_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (label, runtime, precision, batch): the seeds' median speedup, their spread
    ((max - min) / median) and count."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r["runtime"], r["precision"], r["batch_size"]), []).append(r)
    out = []
    for group in groups.values():
        speedups = [r["speedup"] for r in group]
        median = statistics.median(speedups)
        out.append({**group[0], "speedup": median, "speedup_over_mac_ratio": median / group[0]["mac_ratio"],
                    "seeds": len(group), "spread": (max(speedups) - min(speedups)) / median})
    return out


def markdown(result: dict[str, Any]) -> str:
    """Two Markdown tables: speedups (torch, onnxruntime fp32 and int8, the seeds' median and
    spread) and accuracy in onnxruntime on the test images (fp32, int8, agreement with PyTorch).
    A speedup above results.SUSPECT_SPEEDUP x the MAC ratio is marked (suspect)."""
    folded = fold_seeds(result["rows"])
    keyed: dict[tuple, dict] = {}
    for r in folded:
        cell = keyed.setdefault((r["label"], r["batch_size"]), {"mac_ratio": r["mac_ratio"], "spread": 0.0, "seeds": 0})
        cell[(r["runtime"], r["precision"])] = r["speedup"]
        cell["spread"] = max(cell["spread"], r["spread"])
        cell["seeds"] = max(cell["seeds"], r["seeds"])

    def speed(v, ratio, int8=False):
        if v is None:
            return "—"  # int8 does its MACs faster, so only an fp32 speedup is held to the MAC ratio
        return f"{v:.2f}x" + (" (suspect)" if not int8 and v > results.SUSPECT_SPEEDUP * ratio else "")

    lines = ["| model | batch | MAC ratio | torch fp32 | onnxruntime fp32 | onnxruntime int8 | seeds | seeds' spread |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (label, batch), v in keyed.items():
        lines.append(f"| {label} | {batch} | {v['mac_ratio']:.2f}x | {speed(v.get(('torch', 'fp32')), v['mac_ratio'])} | "
                     f"{speed(v.get(('onnxruntime', 'fp32')), v['mac_ratio'])} | "
                     f"{speed(v.get(('onnxruntime', 'int8')), v['mac_ratio'], int8=True)} | {v['seeds']} | {100 * v['spread']:.1f} % |")
    lines += ["", f"Speedup against the fp32 baseline in the same runtime ({result['threads']} thread(s), "
                  f"{result['repeats']} interleaved rounds): {result['statistic']}; the median over seeds. "
                  f"(suspect): an fp32 speedup above {results.SUSPECT_SPEEDUP:g} x the MAC ratio, a measurement to explain, "
                  f"not a result."]
    if result.get("accuracy"):
        lines += ["", *accuracy_markdown(result["accuracy"])]
    return "\n".join(lines) + "\n"


def accuracy_markdown(accuracy: list[dict[str, Any]]) -> list[str]:
    """The accuracy table's lines: per model (mean over its seeds) top-1 in PyTorch and in
    onnxruntime fp32 / int8, what int8 costs, and how often onnxruntime disagreed with PyTorch."""
    groups: dict[str, list[dict]] = {}
    for a in accuracy:
        groups.setdefault(a["label"], []).append(a)
    lines = ["| model | seeds | test images | torch top-1 | onnxruntime fp32 | onnxruntime int8 | int8 − fp32 (points) | "
             "predictions differing from torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    base_labels = [label for label, group in groups.items() if group[0].get("method") == "baseline"]
    costs = {}
    for label, group in groups.items():
        mean = {k: statistics.fmean(a[k] for a in group) for k in ("torch_top1", "onnxruntime_top1", "int8_top1")}
        costs[label] = mean["onnxruntime_top1"] - mean["int8_top1"]
        lines.append(f"| {label} | {len(group)} | {group[0]['images']} | {mean['torch_top1']:.2f} | "
                     f"{mean['onnxruntime_top1']:.2f} | {mean['int8_top1']:.2f} | {-costs[label]:+.2f} | "
                     f"{sum(a['differing_predictions'] for a in group)} |")
    lines.append("")
    if base_labels:
        base_cost = costs[base_labels[0]]
        worse = [label for label, cost in costs.items() if label not in base_labels and cost > base_cost + 0.1]
        lines.append(f"int8 (onnxruntime dynamic quantization of every MatMul) changes the baseline's top-1 by "
                     f"{-base_cost:+.2f} points; " + (f"it costs more than 0.1 point beyond that in: {', '.join(worse)}."
                                                     if worse else "no pruned model loses more than 0.1 point beyond that."))
    lines.append("Top-1 is the mean over a model's seeds; differing predictions are summed over every seed's file.")
    return lines
