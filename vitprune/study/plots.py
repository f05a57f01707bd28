"""Every figure of the study, one function per figure, drawn from `results.collect_runs` output.

Each function takes the list of runs (dicts with "run", "notebook", "run_dir", "metrics") and
returns a `matplotlib.figure.Figure`, or None when the runs hold nothing to draw (e.g. no
speedup was measured); `make_all` folds the seeds of each configuration (`results.fold_seeds`:
mean top-1 with `top1_std`, drawn as error bars) and draws and saves whatever is available. Figures are built
with `Figure()` directly rather than pyplot: no global figure registry, no GUI backend
needed (saving uses Agg), and a notebook shows a returned Figure exactly once. What the
figures share (method labels, markers and colours, the figure factory, the Pareto front) is
`plot_kit`.

Units: MACs are multiply-accumulates per image (`metrics["macs"]`), shown in M or G so the
small Fashion-MNIST models and DeiT-B read naturally; accuracies are percent; tokens per
block include the CLS token (dynamicvit.tokens_per_block's convention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from vitprune.methods import registry
from vitprune.study import kept_tokens, results, table1
from vitprune.study.plot_kit import (annotate_all, is_number, mac_scale, method_label, method_marker, metric,
                                     new_figure, palette, pareto_front, run_label)

FORMATS = ("png", "pdf")


def _trained_token_row(r: dict) -> bool:
    """A trained row of a token method or a combination (its tokens were learned or tuned for)."""
    method = metric(r, "method")
    return results.is_trained(r["metrics"]) and (
        method in results.COMBINATIONS or method in {m.name for m in registry.token_methods()})


# ---------------------------------------------------------------- figures


def accuracy_vs_macs(runs: list[dict]) -> Figure | None:
    """Top-1 against MACs for every method (a swept method's runs joined in MAC order), with
    the Pareto frontier across all of them."""
    pts = [r for r in runs if is_number(metric(r, "macs")) and is_number(metric(r, "top1"))]
    if not pts:
        return None
    scale, unit = mac_scale([metric(r, "macs") for r in pts])
    colors = palette()
    fig, axes = new_figure(size=(7.0, 4.8))
    ax = axes[0, 0]
    methods = [m for m in results.method_order() if any(metric(r, "method") == m for r in pts)]
    methods += sorted({str(metric(r, "method")) for r in pts} - set(methods))
    for method in methods:
        group = [r for r in pts if str(metric(r, "method")) == method]
        xs = [metric(r, "macs") / scale for r in group]
        ys = [metric(r, "top1") for r in group]
        filled = [not metric(r, "control") for r in group]  # a control (nothing pruned) is drawn hollow
        for keep, label in ((True, method_label(method)), (False, None)):
            sel = [i for i, f in enumerate(filled) if f == keep]
            if sel:
                ax.scatter([xs[i] for i in sel], [ys[i] for i in sel], s=90 if method == "baseline" else 45,
                           marker=method_marker(method), label=label if keep else None, zorder=3,
                           facecolors=colors.get(method) if keep else "none", edgecolors=colors.get(method))
        spread = [metric(r, "top1_std") if is_number(metric(r, "top1_std")) else 0.0 for r in group]
        if any(spread):  # seeds: mean ± one standard deviation
            ax.errorbar(xs, ys, yerr=spread, fmt="none", ecolor=colors.get(method), elinewidth=1, capsize=3, zorder=3)
        # a sweep: its points joined in MAC order (not a linear-schedule run: another curve)
        line = sorted((x, y) for x, y, r in zip(xs, ys, group) if str(metric(r, "schedule") or "geometric") == "geometric")
        if len(line) >= 2 and method != "baseline":
            ax.plot([x for x, _ in line], [y for _, y in line], "-", lw=1, alpha=0.6, color=colors.get(method), zorder=2)
    annotate_all(ax, [(metric(r, "macs") / scale, metric(r, "top1"), run_label(r)) for r in pts])
    pruned = [r for r in pts if not metric(r, "control")]  # the frontier of what pruning reaches
    coords = [(metric(r, "macs") / scale, metric(r, "top1")) for r in pruned]
    front = pareto_front(coords)
    ax.plot([coords[i][0] for i in front], [coords[i][1] for i in front], "--", color="0.4",
            lw=1.2, zorder=2, label="Pareto frontier")
    ax.set_xlabel(f"{unit} per image (multiply-accumulates)")
    ax.set_ylabel("top-1 accuracy (%)" + (", mean ± std over seeds" if any(
        is_number(metric(r, "top1_std")) for r in pts) else ""))
    ax.set_title("Accuracy vs compute" + (" (hollow: a control, nothing pruned)"
                                          if any(metric(r, "control") for r in pts) else ""), fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def rate_sweep(runs: list[dict]) -> Figure | None:
    """Top-1 and MACs against DynamicViT's base rate (and training-free rows at the same rates)."""
    swept = [r for r in runs if is_number(metric(r, "base_rate"))
             and metric(r, "method") in [m.name for m in registry.token_methods()]]
    if not swept:
        return None
    base = [r for r in runs if metric(r, "method") == "baseline"]
    macs_all = [metric(r, "macs") for r in swept + base if is_number(metric(r, "macs"))]
    scale, unit = mac_scale(macs_all)
    colors = palette()
    fig, axes = new_figure(ncols=2, size=(9.0, 3.8))
    for ax, key, ylabel, div in ((axes[0, 0], "top1", "top-1 accuracy (%)", 1.0),
                                 (axes[0, 1], "macs", f"{unit} per image", scale)):
        # one line per (method, schedule): a linear-schedule run is not a point of the geometric sweep
        series = sorted({(metric(r, "method"), str(metric(r, "schedule") or "geometric")) for r in swept},
                        key=lambda ms: (results.method_rank(ms[0]), ms[1] != "geometric", ms[1]))
        for method, schedule in series:
            group = sorted((r for r in swept if metric(r, "method") == method
                            and str(metric(r, "schedule") or "geometric") == schedule
                            and is_number(metric(r, key))), key=lambda r: metric(r, "base_rate"))
            if group:
                label = method_label(method) + ("" if schedule == "geometric" else f", {schedule}")
                xs, ys = [metric(r, "base_rate") for r in group], [metric(r, key) / div for r in group]
                ax.plot(xs, ys, marker=method_marker(method), color=colors[method], label=label,
                        ls="-" if schedule == "geometric" else ":")
                spread = [metric(r, "top1_std") if key == "top1" and is_number(metric(r, "top1_std")) else 0.0
                          for r in group]
                if any(spread):  # seeds: mean ± one standard deviation
                    ax.errorbar(xs, ys, yerr=spread, fmt="none", ecolor=colors[method], elinewidth=1, capsize=3)
        for r in base[:1]:
            if is_number(metric(r, key)):
                ax.axhline(metric(r, key) / div, ls="--", color=colors["baseline"], label="baseline")
        ax.set_xlabel("base rate ρ (keep ratio at block 3; 1: the control)")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0, 0].set_title("Accuracy vs base rate")
    axes[0, 1].set_title("Compute vs base rate")
    return fig


def tokens_per_block(runs: list[dict]) -> Figure | None:
    """Tokens entering each block (CLS included) for each schedule of a trained token method: one
    line per distinct schedule (seeds and controls keep the same counts, so they are drawn once)."""
    rows = [r for r in runs if isinstance(metric(r, "tokens_per_block"), list) and metric(r, "tokens_per_block")
            and _trained_token_row(r) and not metric(r, "control")]
    distinct = {(metric(r, "method"), tuple(metric(r, "tokens_per_block"))): r for r in rows}
    if not distinct:
        return None
    rows = sorted(distinct.values(), key=lambda r: (results.method_rank(metric(r, "method")),
                                                    -(metric(r, "base_rate") or 0)))
    import seaborn as sns

    colors = sns.color_palette("viridis", len(rows))
    fig, axes = new_figure(size=(6.5, 4.0))
    ax = axes[0, 0]
    for color, r in zip(colors, rows):
        tokens = metric(r, "tokens_per_block")
        rate = f" ρ = {metric(r, 'base_rate'):g}" if is_number(metric(r, "base_rate")) else ""
        ax.step(range(len(tokens)), tokens, where="mid", marker=method_marker(metric(r, "method")), ms=4,
                color=color, label=method_label(metric(r, "method")) + rate)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("block index")
    ax.set_ylabel("tokens entering the block (incl. CLS)")
    ax.set_ylim(bottom=0)
    ax.set_title("Tokens kept per block")
    ax.legend(fontsize=8)
    return fig


def speedup_vs_mac_ratio(runs: list[dict]) -> Figure | None:
    """Measured CPU speedup against the MAC ratio (baseline MACs / variant MACs); y = x is
    the speedup the MAC count promises. A point above results.SUSPECT_SPEEDUP x its MAC ratio is drawn
    hollow in red and labelled suspect: it is not plotted as a finding."""
    pts = [r for r in runs if is_number(metric(r, "speedup")) and is_number(metric(r, "mac_ratio"))]
    if not pts:
        return None
    suspect = {id(r) for r in results.suspect_speedups(pts)}
    colors = palette()
    fig, axes = new_figure(size=(5.5, 4.5))
    ax = axes[0, 0]
    for r in pts:
        method = str(metric(r, "method"))
        x, y = metric(r, "mac_ratio"), metric(r, "speedup")
        if id(r) in suspect:
            ax.scatter(x, y, facecolors="none", edgecolors="red", marker=method_marker(method), s=60, zorder=3)
            continue
        ax.scatter(x, y, color=colors.get(method), marker=method_marker(method), s=45, zorder=3)
        if is_number(metric(r, "speedup_std")):
            ax.errorbar(x, y, yerr=metric(r, "speedup_std"), fmt="none", ecolor=colors.get(method), capsize=3)
    annotate_all(ax, [(metric(r, "mac_ratio"), metric(r, "speedup"),
                        run_label(r) + (" (suspect)" if id(r) in suspect else "")) for r in pts])
    hi = max(max(metric(r, "mac_ratio"), metric(r, "speedup")) for r in pts) * 1.1
    ax.plot([1, hi], [1, hi], ":", color="0.4", label="speedup = MAC ratio")
    ax.plot([1, hi], [results.SUSPECT_SPEEDUP, results.SUSPECT_SPEEDUP * hi], "-", lw=0.8, color="red", alpha=0.4,
            label=f"{results.SUSPECT_SPEEDUP:g} x MAC ratio: above is suspect")
    for method in dict.fromkeys(str(metric(r, "method")) for r in pts):
        ax.scatter([], [], color=colors.get(method), marker=method_marker(method),
                   label=method_label(method))
    precisions = sorted({str(metric(r, "bench_precision") or "fp32") for r in pts})
    devices = sorted({str(metric(r, "bench_device") or "cpu").split(":")[0].upper() for r in pts})
    ax.set_xlabel("MAC ratio (baseline / variant)")
    ax.set_ylabel(f"measured {' / '.join(devices)} speedup ({', '.join(precisions)})")
    ax.set_title("Does fewer MACs mean faster?")
    ax.legend(fontsize=8)
    return fig


def training_curves(runs: list[dict]) -> Figure | None:
    """The running training loss per optimizer step of each fine-tune (its history's `trace`),
    one seed per configuration; controls dashed. A fine-tune of one or two epochs has as many
    per-epoch records, so the curve is drawn from the steps."""
    seen, rows = set(), []
    for r in runs:
        history = metric(r, "history")
        if "#" in r["run"] or not isinstance(history, list):
            continue
        trace = [p for h in history if isinstance(h, dict) for p in (h.get("trace") or [])]
        if len(trace) >= 2 and results.point_of(r) not in seen:
            seen.add(results.point_of(r))
            rows.append((r, trace))
    if not rows:
        return None
    import seaborn as sns

    colors = palette()
    fig, axes = new_figure(size=(7.5, 4.5))
    ax = axes[0, 0]
    methods = [str(metric(r, "method")) for r, _ in rows]
    shade = {m: iter(sns.dark_palette(colors.get(m, "0.3"), methods.count(m) + 1, reverse=True))
             for m in set(methods)}  # one method's runs: its hue, darker to lighter
    for (r, trace), method in zip(rows, methods):
        ax.plot([p[0] for p in trace], [p[1] for p in trace], color=next(shade[method]), lw=1.2,
                ls="--" if metric(r, "control") else "-", label=run_label(r))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (running mean within the epoch)")
    ax.set_title("How each fine-tune trained (one seed per configuration; dashed: controls)")
    ax.legend(fontsize=6, ncol=2)
    return fig


def _baseline_widths(run: dict, runs: list[dict]) -> tuple[list[int] | None, list[int] | None]:
    """Per-block original (heads, MLP channels): from the run, else the baseline run's spec,
    else the timm model named by the run (built lazily, random init)."""
    depth = len(metric(run, "block_spec"))

    def per_block(value):
        if is_number(value):
            return [int(value)] * depth
        if isinstance(value, list) and len(value) == depth:
            return [int(v) for v in value]
        return None

    heads, mlp = per_block(metric(run, "baseline_heads")), per_block(metric(run, "baseline_mlp"))
    if heads and mlp:
        return heads, mlp
    for r in runs:
        spec = metric(r, "block_spec")
        if metric(r, "method") == "baseline" and isinstance(spec, list) and len(spec) == depth:
            return heads or [b["heads"] for b in spec], mlp or [b["mlp"] for b in spec]
    name = metric(run, "model_name")
    if name:
        try:
            import timm

            import vitprune.models  # noqa: F401  (registers the embedded model with timm; local: only this fallback needs torch)

            model = timm.create_model(name, pretrained=False)
            blocks = list(model.blocks)
            if len(blocks) == depth:
                return (heads or [int(b.attn.num_heads) for b in blocks],
                        mlp or [int(b.mlp.fc1.out_features) for b in blocks])
        except Exception:  # an unknown name just means no reference widths
            pass
    return heads, mlp


def layer_widths(runs: list[dict]) -> Figure | None:
    """Per-layer attention heads and MLP channels kept by block pruning (fraction of the
    original width when it is known, else absolute counts), for the runs whose widths differ from
    block to block (global ranking); per-layer ranking keeps every block alike, which Table 1's
    row already says, so those runs draw nothing (and a profile with only them, no figure)."""
    def varies(spec):
        return len({b.get("heads") for b in spec}) > 1 or len({b.get("mlp") for b in spec}) > 1

    rows = [r for r in runs if isinstance(metric(r, "block_spec"), list) and metric(r, "block_spec")
            and metric(r, "method") != "baseline" and "#" not in r["run"] and varies(metric(r, "block_spec"))]
    rows = list({results.point_of(r): r for r in reversed(rows)}.values())[::-1]  # one seed per configuration
    if not rows:
        return None
    import seaborn as sns

    colors = sns.color_palette("colorblind", len(rows))
    fig, axes = new_figure(ncols=2, size=(10.0, 3.8))
    width = 0.8 / len(rows)
    relative = True
    series = []
    for r in rows:
        spec = metric(r, "block_spec")
        heads0, mlp0 = _baseline_widths(r, runs)
        heads = [b.get("heads", 0) for b in spec]
        mlp = [b.get("mlp", 0) for b in spec]
        if not (heads0 and mlp0):
            relative = False
        series.append((r, heads, mlp, heads0, mlp0))
    for k, (r, heads, mlp, heads0, mlp0) in enumerate(series):
        x = np.arange(len(heads)) - 0.4 + width * (k + 0.5)
        for ax, kept, full in ((axes[0, 0], heads, heads0), (axes[0, 1], mlp, mlp0)):
            values = [a / b if b else 0.0 for a, b in zip(kept, full)] if relative else kept
            ax.bar(x, values, width=width, color=colors[k], label=run_label(r))
    for ax, what in ((axes[0, 0], "attention heads"), (axes[0, 1], "MLP channels")):
        ax.set_xticks(range(len(series[0][1])))
        ax.set_xlabel("block index")
        ax.set_ylabel(f"fraction of {what} kept" if relative else f"{what} kept")
        if relative:
            ax.set_ylim(0, 1.05)
        ax.set_title(f"{what[0].upper()}{what[1:]} kept per block")
        ax.legend(fontsize=7)
    return fig


def reported_in_one_unit(runs: list[dict] | None = None) -> Figure:
    """The study's and the papers' ImageNet rows, top-1 against GMACs in ONE unit.

    Hollow markers show where the study's table puts a row when its "FLOPs" number is read
    as printed (EfficientFormer's doubled GMACs land twice as far right); arrows lead to the
    same row in GMACs. Independent of our runs (the argument is accepted for uniformity).
    """
    rows = [r for r in table1.REFERENCE_ROWS if r["printed_G"] is not None and r["top1"] is not None]
    fig, axes = new_figure(size=(7.5, 4.8))
    ax = axes[0, 0]
    sources = {table1.STUDY: ("tab:red", "o"), table1.PAPER: ("tab:blue", "s")}
    for source, (color, marker) in sources.items():
        group = [r for r in rows if r["source"] == source]
        gmacs = [r["printed_G"] / (2 if r["printed_unit"] == "GFLOPs" else 1) for r in group]
        ax.scatter(gmacs, [r["top1"] for r in group], color=color, marker=marker, s=40, zorder=3,
                   label=f"{source}, in GMACs")
        for r, g in zip(group, gmacs):
            if source == table1.STUDY:
                ax.annotate(r["model"], (g, r["top1"]), textcoords="offset points", xytext=(4, -9), fontsize=7)
            if r["printed_unit"] == "GFLOPs":
                ax.scatter([r["printed_G"]], [r["top1"]], facecolors="none", edgecolors=color, marker=marker, s=40)
                ax.annotate("", xy=(g, r["top1"]), xytext=(r["printed_G"], r["top1"]),
                            arrowprops={"arrowstyle": "->", "color": "0.5", "lw": 0.8})
    ax.scatter([], [], facecolors="none", edgecolors="tab:red", marker="o", label="as printed (doubled GMACs)")
    ax.set_xlabel("GMACs per image (multiply-accumulates, one unit)")
    ax.set_ylabel("ImageNet top-1 (%)")
    ax.set_title("The study's Table 1 in one unit")
    ax.legend(fontsize=8, loc="lower right")
    return fig


FIGURES: dict[str, Callable[[list[dict]], Figure | None]] = {
    "accuracy_vs_macs": accuracy_vs_macs,
    "rate_sweep": rate_sweep,
    "tokens_per_block": tokens_per_block,
    "speedup_vs_mac_ratio": speedup_vs_mac_ratio,
    "kept_tokens": kept_tokens.figure,
    "training_curves": training_curves,
    "layer_widths": layer_widths,
    "reported_in_one_unit": reported_in_one_unit,
}


def save(fig: Figure, out_dir: str | os.PathLike, name: str) -> list[Path]:
    """Write `<out_dir>/<name>.png` (150 dpi) and `.pdf`, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out / f"{name}.{fmt}"
        tmp = out / f".{name}.tmp.{fmt}"
        fig.savefig(tmp, format=fmt, dpi=150)
        os.replace(tmp, path)
        paths.append(path)
    return paths


def edge_latency(rows: list[dict]) -> Figure | None:
    """Speedup against the MAC ratio per pruned model, torch and onnxruntime side by side, one
    panel per batch size (fp32 rows of `edge_latency.fold_seeds`); y = x is what the MACs promise."""
    rows = [r for r in rows if r.get("precision", "fp32") == "fp32"]
    if not rows:
        return None
    colors = palette()
    batches = sorted({r["batch_size"] for r in rows})
    fig, axes = new_figure(ncols=len(batches), size=(5.0 * len(batches), 4.3))
    hi = max(max(r["mac_ratio"], r["speedup"]) for r in rows) * 1.1
    for ax, batch in zip(axes[0], batches):
        for r in (r for r in rows if r["batch_size"] == batch):
            filled = r["runtime"] == "onnxruntime"
            color = colors.get(str(r["method"]))
            ax.scatter(r["mac_ratio"], r["speedup"], s=50, zorder=3, marker=method_marker(str(r["method"])),
                       facecolors=color if filled else "none", edgecolors=color)
        ax.plot([1, hi], [1, hi], ":", color="0.4")
        ax.set_title(f"batch {batch}")
        ax.set_xlabel("MAC ratio (baseline / variant)")
    axes[0][0].set_ylabel("measured speedup (median latency ratio)")
    for method in dict.fromkeys(str(r["method"]) for r in rows):
        axes[0][0].scatter([], [], color=colors.get(method), marker=method_marker(method),
                           label=method_label(method))
    axes[0][0].scatter([], [], facecolors="none", edgecolors="0.3", label="hollow: torch")
    axes[0][0].scatter([], [], color="0.3", label="filled: onnxruntime")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Edge latency: torch vs onnxruntime (CPU)")
    return fig


# figures drawn from one seed's runs (or none): the same with one seed or several
ONE_SEED_FIGURES = ("kept_tokens", "tokens_per_block", "training_curves", "layer_widths", "reported_in_one_unit")


def make_all(runs: list[dict], out_dir: str | os.PathLike, max_kept_images: int = 3) -> dict[str, Figure]:
    """Draw every figure the runs support, save each as PNG+PDF; returns {name: Figure}.
    Figures with nothing to draw are skipped, and a stale file of that name is removed so
    the folder never shows a figure from older runs. The seeds of a configuration are folded
    (`results.fold_seeds`): means, with their standard deviation where a figure shows spread.
    When several seeds are folded, the figures that show one seed or none (`ONE_SEED_FIGURES`)
    are left to the one-seed folder: a seeded folder holds seeded figures only."""
    runs = results.fold_seeds(runs)
    seeded = any(len(r.get("seed_runs", ())) > 1 for r in runs)
    drawn = {}
    for name, func in FIGURES.items():
        if seeded and name in ONE_SEED_FIGURES:
            fig = None
        else:
            fig = func(runs, max_images=max_kept_images) if func is kept_tokens.figure else func(runs)
        if fig is None:
            for fmt in FORMATS:
                (Path(out_dir) / f"{name}.{fmt}").unlink(missing_ok=True)
            continue
        save(fig, out_dir, name)
        drawn[name] = fig
    return drawn
