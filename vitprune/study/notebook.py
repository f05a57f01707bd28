"""The setup and finish every training notebook (01-04) shares, so that a notebook holds
narrative, parameters and calls: `start` sets threads and seed, validates the launch plan before
any data is read, makes the run folder and builds the `TrainConfig` from the notebook's
parameters; `Session.finish` writes metrics.json with the launch facts, the recipe and the wall
time. A notebook passes its own `globals()`: the parameters papermill injected or the defaults."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from timm.data import resolve_model_data_config
from torch import nn
from torch.utils.data import Dataset

from vitprune.errors import UserError
from vitprune.methods import registry
from vitprune.study import config, release, results, run_folders
from vitprune.train import engine, launch
from vitprune.train.recipe import TrainConfig

# parameters that never change the trained weights: they do not key the per-epoch checkpoints
NOT_TRAINING = ("preload", "eval_per_class", "eval_batch_size", "num_workers", "threads", "launch_config")
WEIGHTS = ("checkpoint", "token_checkpoint")  # parameters naming weights a fine-tune starts from (keys its checkpoints)


@dataclass
class Session:
    """One notebook run: its parameters, folder, launch plan and training configuration."""

    notebook: str
    params: Mapping[str, Any]
    run_dir: Path
    plan: launch.Plan
    train_config: TrainConfig
    started: float = field(default_factory=time.perf_counter)

    def upstream(self, notebook: str, point: str | None = None, **values: Any) -> Path:
        """The run folder of an earlier notebook of this profile (`values`: its sweep values and
        seed, where the profile names its runs by them; `point`: a named point's name, such as
        "control"); a lab run reads the lab's own run of it when there is one
        (`run_folders.upstream_run_dir`)."""
        return run_folders.upstream_run_dir(dict(self.params), notebook, values, point)

    def weights(self, value: str) -> tuple[Path | None, dict[str, Any] | None]:
        """A path parameter naming weights (`checkpoint`): (its path, resolved from the repository
        root as the pipeline's kernels see it, or None when empty; the release record when it is a
        released baseline, its sha256 checked: `release.check`, else None)."""
        if not value:
            return None, None
        path = config.resolve_path(value)
        return path, release.check(path, shown_as=value) if release.is_release(path) else None

    def train_state(self, exclude: Sequence[str] = (), sources: Sequence[str | Path] = ()) -> Path:
        """Where this run keeps its per-epoch checkpoints, keyed by every parameter that shapes
        training (all but NOT_TRAINING and `exclude`) and by the `sources` it starts from: an
        interrupted run resumes, changed settings (or a retrained upstream model) start afresh."""
        settings = config.training_settings(self.notebook, dict(self.params), NOT_TRAINING + tuple(exclude))
        weights = [self.params[k] for k in WEIGHTS if self.params.get(k)]  # weights it starts from, by parameter
        return run_folders.train_state_dir(self.run_dir, settings, sources=list(sources) + weights)

    def baseline_top1(self, teacher: nn.Module, eval_set: Dataset, batch_size: int, num_workers: int = 0) -> float:
        """The top-1 a fine-tune is compared with, one rule for notebooks 02-04: notebook 01's
        recorded top-1 when it was measured on as many images at this model's crop, else the
        baseline `teacher` evaluated here on `eval_set` (%)."""
        recorded = results.read_metrics(self.upstream("01_deit_baseline"))
        crop = str(float(resolve_model_data_config(teacher)["crop_pct"]))
        top1 = (recorded.get("top1_by_crop_pct") or {}).get(crop)
        if top1 is not None and recorded.get("eval_samples") == len(eval_set):
            return float(top1)
        return engine.evaluate(teacher, eval_set, batch_size=batch_size, num_workers=num_workers,
                               **self.train_config.scale)["top1"]

    def reading(self, metrics: dict[str, Any], study_drop: float | None = None) -> str:
        """The run's result in words: against the baseline, against this notebook's control of the
        same seed (the same fine-tune with nothing pruned) when it has run, and against the drop
        the study reports where it reports one (points of top-1)."""
        top1, base = float(metrics["top1"]), metrics.get("baseline_top1")
        text = f"{metrics['label']}: top-1 {top1:.2f} %"
        if base is not None:
            text += f", {top1 - float(base):+.2f} points against the baseline ({float(base):.2f} %)"
        if metrics.get("mac_ratio") and float(metrics["mac_ratio"]) > 1.005:
            text += f", at 1/{float(metrics['mac_ratio']):.2f} of its MACs"
        if metrics.get("control"):
            return text + ". This is the control: what the fine-tune alone does, with nothing pruned."
        try:
            point = metrics.get("shared_control") or "control"  # the plain fine-tune EViT and ToMe share
            control = results.read_metrics(self.upstream(self.notebook, point, seed=self.params["seed"]))
        except UserError:
            control = None
        if control and control.get("top1") is not None:
            text += (f". Its control (the same fine-tune, nothing pruned) reached {float(control['top1']):.2f} %, "
                     f"so pruning costs {top1 - float(control['top1']):+.2f} points at this seed")
        else:
            text += ". Its control has not run at this seed, so the drop mixes pruning with the fine-tune"
        if study_drop is not None:
            text += f"; the study reports {study_drop:+.2f} points for its small-scale DynamicViT at this rate"
        return text + ". One seed: notebook 05 gives the interval over seeds."

    def finish(self, metrics: dict[str, Any], main_model: str | None = None) -> dict[str, Any]:
        """Write `metrics` (a `results.metrics_row`, or the notebook's own record) as this run's
        metrics.json, with where it ran (`launch.Plan.describe`), timm's recipe and the wall time.
        `main_model`: the main row's model file, relative to the run folder (notebook 04 saves each
        order in a sub-folder), also copied to <run_dir>/model.pt, atomically, as every model run
        provides."""
        metrics.update(self.plan.describe(), recipe=self.train_config.recipe,
                       wall_time_s=time.perf_counter() - self.started)
        if main_model:
            tmp = self.run_dir / "model.pt.tmp"
            shutil.copyfile(self.run_dir / main_model, tmp)
            os.replace(tmp, self.run_dir / "model.pt")
        results.write_metrics(self.run_dir, metrics)
        return metrics


def load_plugins(params: Mapping[str, Any]) -> None:
    """Register the methods of the notebook's `plugins` (module names, or .py files relative to the
    repository), as the pipeline did when it checked the parameters that name them."""
    registry.load_plugins(params.get("plugins") or [], root=config.project_root())


def start(notebook: str, params: Mapping[str, Any]) -> Session:
    """Set up `notebook`'s run from its parameters (its plugins registered, validated launch first:
    a bad value fails before any data is read) and print where it writes."""
    started = time.perf_counter()
    load_plugins(params)
    torch.set_num_threads(int(params["threads"]))
    train_config = TrainConfig.from_params(params)
    plan = launch.plan(**train_config.scale)
    torch.manual_seed(int(params["seed"]))
    run_dir = run_folders.own_run_dir(dict(params), notebook)
    run_dir.mkdir(parents=True, exist_ok=True)
    # live curves of every fine-tune in the run folder: tensorboard --logdir runs/
    train_config = train_config.replace(log_dir=str(run_dir / "tensorboard"))
    print("run dir:", run_dir)
    return Session(notebook, params, run_dir, plan, train_config, started)


def show_png(fig_dir: str | os.PathLike, name: str) -> None:
    """Show `<fig_dir>/<name>.png` exactly as it was written (when it was)."""
    from IPython.display import Image, display  # local: only a notebook shows figures

    path = Path(fig_dir) / f"{name}.png"
    if path.is_file():
        display(Image(filename=str(path)))


def clear_outputs(fig_dir: str | os.PathLike, *names: str) -> None:
    """Remove files of a figures folder an earlier run wrote and this one does not make (a part
    switched off), so the folder never shows a stale table or figure."""
    for name in names:
        (Path(fig_dir) / name).unlink(missing_ok=True)
