"""What notebook 04 (the combination) does besides training: where each order starts
(`first_stage`: a single-method run's hand-off), what its second stage trains on
(`second_stage_set`: what the first stage's budget left), finishing each model (`finish_model`:
evaluate, count, save, its metrics row), the training-free comparators' rows (`comparator_rows`)
and the run's main row (`main_row`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from torch import nn
from torch.utils.data import Dataset

from vitprune import data, measure, models
from vitprune.errors import UserError
from vitprune.methods import registry
from vitprune.study import results
from vitprune.train import engine


def finish_model(model: nn.Module, method: str, label: str, *, eval_set: Dataset, eval_batch_size: int,
                 class_names: Sequence[str], model_name: str | None, img_size: int | None,
                 baseline_macs: int, history: list | None, train_wall_time_s: float,
                 run_dir: str | os.PathLike | None = None, num_workers: int = 0,
                 evaluate_options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """Evaluate `model` on `eval_set` (eval mode), count it (MACs per image, batch 1) and
    return its row: results.metrics_row's keys plus train_wall_time_s, history, mac_ratio
    (= baseline_macs / this model's MACs) and `extra`. A trained model (`history` not None)
    is saved to <run_dir>/<method>/model.pt and the row's `checkpoint` is that path relative
    to run_dir; an untrained one (training-free) is not saved. `evaluate_options` go to
    engine.evaluate (num_processes, mixed_precision, launch_config)."""
    model.eval()
    ev = engine.evaluate(model, eval_set, batch_size=eval_batch_size, class_names=class_names,
                         num_workers=num_workers, **(evaluate_options or {}))
    cnt = measure.count(model)
    row = results.metrics_row(method, label, model_name=model_name, img_size=img_size, count=cnt, evaluation=ev,
                              train_wall_time_s=train_wall_time_s, history=history,
                              mac_ratio=baseline_macs / cnt["macs"], **extra)
    if history is not None:
        if run_dir is None:
            raise ValueError("finish_model: a trained model (history given) needs run_dir to be saved in")
        path = models.save_checkpoint(Path(run_dir) / method / "model.pt", model)
        row["checkpoint"] = str(path.relative_to(run_dir))
    print(f"{label}: top-1 {row['top1']:.2f} %, {row['params'] / 1e6:.3f} M params, "
          f"{row['macs'] / 1e6:.2f} M MACs (baseline / this = {row['mac_ratio']:.2f})")
    return row


def first_stage(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Where a combination (notebook 04) starts from a single-method run (02 or 03).

    When the run saved a hand-off (`handoff.pt`: the model after the first part of its
    fine-tune), the combination continues that model, and `images_left` is what the run's budget
    has left for the second stage: both stages together then see exactly the images the single
    method saw (equal budgets by construction). Otherwise it continues the finished `model.pt`
    and `images_left` is None (the second stage brings its own budget, reported beside it).
    `budget` is what the first stage cost (the hand-off's wall time is the run's, pro rata)."""
    run_dir = Path(run_dir)
    budget = results.read_metrics(run_dir).get("budget") or {}
    handoff = budget.get("handoff")
    if handoff and (run_dir / "handoff.pt").is_file():
        wall = budget.get("wall_s")
        share = handoff["steps"] / budget["steps"]
        return {"checkpoint": run_dir / "handoff.pt", "images_left": budget["images"] - handoff["images"],
                "budget": {"steps": handoff["steps"], "images": handoff["images"],
                           "wall_s": wall * share if wall is not None else None}}
    return {"checkpoint": run_dir / "model.pt", "images_left": None, "budget": budget or None}


def second_stage_set(stage: dict[str, Any] | None, splits, dsd, model: nn.Module, epochs: int,
                     **split_options: Any) -> tuple[Dataset, int]:
    """(training set, epochs) of an order's second stage: after a hand-off, what its first stage's
    run left of its budget, as class-balanced images over one epoch (per class rounded up: steps
    drop the last partial batch); after a finished model, `splits`' training set for `epochs`."""
    left = (stage or {}).get("images_left")
    if not left:
        return splits.train_set, epochs
    per_class = -(-left // len(splits.class_names))
    return data.prepare_splits(dsd, model, train_per_class=per_class, **split_options).train_set, 1


def comparator_rows(baseline: nn.Module, comparators: Sequence[str], rates: Sequence[float],
                    params: Mapping[str, Any], finish: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of the methods that need no training (`comparators`, registered names), each applied
    to a copy of `baseline` at each keep rate of `rates` and finished by `finish` (`finish_model`
    with the notebook's evaluation set), in the order listed. A method with a keep rate takes it as
    `base_rate` (with the notebook's keep schedule `params`); one without (ToMe) is matched to the
    MACs of the first comparator's row at that rate (`target_macs`), and its row says so
    (`matched_rate`, `matched_macs`)."""
    rows: list[dict[str, Any]] = []
    first: dict[float, dict[str, Any]] = {}  # the first comparator's row at each rate
    for name in comparators:
        method = registry.get(name)
        if not method.result_without_training:
            raise UserError(f"comparator {name!r} is no result without training; notebook 02 fine-tunes it "
                            f"(method: {name})")
        for rate in rates:
            reference = first.get(rate, {})
            at = {**params, "base_rate": rate, "target_macs": reference.get("macs"),
                  "matched_label": reference.get("label", "").split(",")[0]}  # e.g. "CLS-attention top-k ρ=0.7"
            options = method.options(at)
            model = registry.apply(copy.deepcopy(baseline), name, **options)
            matched = {"matched_rate": rate, "matched_macs": reference["macs"]} if "target_macs" in options else {}
            rows.append(finish(model, name, f"{method.label_at(at)}, no training", history=None, train_wall_time_s=0.0,
                               **method.describe(model), **matched))
            first.setdefault(rate, rows[-1])
            del model
    return rows


def main_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's main row: the first combined order's (a trained model), else the first row."""
    if not rows:
        raise UserError("nothing was run: choose an order and/or give comparators")
    return next((r for r in rows if results.is_trained(r)), rows[0])
