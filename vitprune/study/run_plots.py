"""Figures of one run, drawn by the notebook that makes it (plots.py draws the study's figures
across runs; a figure both need is drawn there, and a notebook passes it its own run through
`as_run`). Every function returns a matplotlib `Figure` (Jupyter shows it as a cell's value;
nothing goes through pyplot's global state), or None when there is nothing to draw."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from vitprune.study import plots


def as_run(metrics: Mapping[str, Any], run_dir: str | Path = "", name: str = "") -> dict[str, Any]:
    """A run record as `results.collect_runs` gives them (what plots.py reads) for metrics that
    are not written yet or not a run of their own (the baseline beside a fine-tune)."""
    return {"run": name or str(metrics.get("label", "run")), "run_dir": str(run_dir), "metrics": dict(metrics)}


def tokens_against_baseline(model: Any, method: str, label: str, base_rate: float,
                            tokens_per_block: Sequence[int]) -> Figure | None:
    """plots.py's tokens-per-block figure for one token-pruned run (`tokens_per_block`, CLS
    included) beside the unpruned `model`, into whose every block every token enters."""
    every = [int(model.num_prefix_tokens) + int(model.patch_embed.num_patches)] * len(model.blocks)
    return plots.tokens_per_block([
        as_run({"method": method, "label": "baseline", "base_rate": 1.0, "tokens_per_block": every}),
        as_run({"method": method, "label": label, "base_rate": base_rate, "tokens_per_block": list(tokens_per_block)})])


def training_trace(history: Sequence[Mapping[str, Any]], title: str = "") -> Figure | None:
    """Loss per step (running mean within each epoch) with the learning rate, and accuracy per
    epoch (training, augmented; eval top-1 where the run evaluated)."""
    if not history:
        return None
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    steps_per_epoch = history[0]["steps_per_epoch"]
    trace = np.array([t for h in history for t in h.get("trace", [])])
    epochs = [h["epoch"] for h in history]
    if len(trace):
        loss_ax.plot(trace[:, 0] / steps_per_epoch, trace[:, 1], lw=1, label="train loss (running mean per epoch)")
        lr_ax = loss_ax.twinx()
        lr_ax.plot(trace[:, 0] / steps_per_epoch, trace[:, 2], color="0.7", lw=1)
        lr_ax.set_ylabel("learning rate", color="0.5")
    loss_ax.plot(epochs, [h["train_loss"] for h in history], "o", label="epoch mean")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    loss_ax.legend(fontsize=8)
    acc_ax.plot(epochs, [h["train_acc"] for h in history], "o-", label="train (augmented)")
    evaluated = [h for h in history if h.get("eval_top1") is not None]
    if evaluated:
        acc_ax.plot([h["epoch"] for h in evaluated], [h["eval_top1"] for h in evaluated], "s-", label="eval top-1")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.set_xticks(epochs)
    acc_ax.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def per_class(evaluation: Mapping[str, Any], class_names: Sequence[str]) -> Figure:
    """Up to 20 classes: the confusion matrix (rows = true class, shaded by row share, counts
    written) beside per-class accuracy; more (ImageNet): the distribution of per-class top-1 and
    the five worst classes."""
    accuracy = evaluation["per_class_accuracy"]
    if len(class_names) > 20:
        fig = Figure(figsize=(8, 3), layout="constrained")
        ax = fig.subplots()
        values = np.array([v for v in accuracy.values() if v is not None])
        ax.hist(values, bins=50)
        ax.set_xlabel("per-class top-1 (%)")
        ax.set_ylabel("classes")
        worst = sorted(((n, a) for n, a in accuracy.items() if a is not None), key=lambda kv: kv[1])[:5]
        ax.set_title("worst: " + ", ".join(f"{n} {a:.0f}%" for n, a in worst), fontsize=8)
        return fig
    cm = np.array(evaluation["confusion_matrix"])
    share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    cm_ax, acc_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    cm_ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(cm)):
        cm_ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ticks = range(len(class_names))
    cm_ax.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=8)
    cm_ax.set_yticks(ticks, class_names, fontsize=8)
    cm_ax.set_xlabel("predicted")
    cm_ax.set_ylabel("true")
    cm_ax.set_title(f"confusion matrix ({evaluation['num_samples']} images)")
    acc = [accuracy[n] or 0.0 for n in class_names]
    acc_ax.barh(ticks, acc, color="tab:blue")
    acc_ax.set_yticks(ticks, class_names, fontsize=8)
    acc_ax.invert_yaxis()
    acc_ax.set_xlim(max(0, min(acc) - 10), 100)
    acc_ax.set_xlabel("per-class accuracy (%)")
    acc_ax.axvline(evaluation["top1"], color="k", lw=1, ls="--", label=f"top-1 {evaluation['top1']:.1f} %")
    acc_ax.legend(fontsize=8, loc="lower left")
    return fig


def gate_schedule(log: Sequence[Mapping[str, Any]], baseline_spec: Sequence[Mapping[str, int]]) -> Figure | None:
    """The fraction of heads and MLP channels still open at each of GradualPruner's updates."""
    if not log:
        return None
    heads = sum(s["heads"] for s in baseline_spec)
    mlp = sum(s["mlp"] for s in baseline_spec)
    steps = [e["step"] for e in log]
    fig = Figure(figsize=(6, 3), layout="constrained")
    ax = fig.subplots()
    ax.step(steps, [e["heads"] / heads for e in log], where="post", label="heads open")
    ax.step(steps, [e["mlp"] / mlp for e in log], where="post", label="MLP channels open")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("fraction open")
    ax.set_ylim(0, 1.05)
    ax.set_title("Cubic pruning schedule (Zhu & Gupta 2017)")
    ax.legend()
    return fig


def kept_units(kept: Sequence[Mapping[str, Sequence[int]]], baseline_spec: Sequence[Mapping[str, int]]) -> Figure:
    """Which units block pruning kept, per block: a filled cell is a kept head (left) or MLP
    channel (right), by its index in the unpruned block."""
    heads = np.zeros((len(kept), max(s["heads"] for s in baseline_spec)))
    mlp = np.zeros((len(kept), max(s["mlp"] for s in baseline_spec)))
    for i, k in enumerate(kept):
        heads[i, k["heads"]] = 1
        mlp[i, k["mlp"]] = 1
    fig = Figure(figsize=(11, 3.5), layout="constrained")
    head_ax, mlp_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3]})
    head_ax.imshow(heads, cmap="Greens", vmin=0, vmax=1, aspect="auto")
    head_ax.set_xlabel("head")
    head_ax.set_ylabel("block")
    head_ax.set_title(f"heads kept: {int(heads.sum())}/{sum(s['heads'] for s in baseline_spec)}")
    mlp_ax.imshow(mlp, cmap="Greens", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    mlp_ax.set_xlabel("MLP hidden channel")
    mlp_ax.set_title(f"MLP channels kept: {int(mlp.sum())}/{sum(s['mlp'] for s in baseline_spec)}")
    return fig
