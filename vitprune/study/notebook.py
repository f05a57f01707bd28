"""The setup and finish every training notebook (01-04) shares, so that a notebook holds
narrative, parameters and calls: `start` sets threads and seed, validates the launch plan before
any data is read, makes the run folder and builds the `TrainConfig` from the notebook's
parameters; `Session.finish` writes metrics.json with the launch facts, the recipe and the wall
time. A notebook passes its own `globals()`: the parameters papermill injected or the defaults."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vitprune.study import config, release, results, run_folders
from vitprune.train import launch
from vitprune.train.recipe import TrainConfig

# parameters that never change the trained weights: they do not key the per-epoch checkpoints
NOT_TRAINING = ("preload", "eval_per_class", "eval_batch_size", "num_workers", "threads", "launch_config")


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
        return run_folders.train_state_dir(self.run_dir, settings, sources=list(sources))

    def finish(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """Write `metrics` (a `results.metrics_row`, or the notebook's own record) as this run's
        metrics.json, with where it ran (`launch.Plan.describe`), timm's recipe and the wall time."""
        metrics.update(self.plan.describe(), recipe=self.train_config.recipe,
                       wall_time_s=time.perf_counter() - self.started)
        results.write_metrics(self.run_dir, metrics)
        return metrics


def start(notebook: str, params: Mapping[str, Any]) -> Session:
    """Set up `notebook`'s run from its parameters (validated launch first: a bad value fails
    before any data is read) and print where it writes."""
    started = time.perf_counter()
    torch.set_num_threads(int(params["threads"]))
    train_config = TrainConfig.from_params(params)
    plan = launch.plan(**train_config.scale)
    torch.manual_seed(int(params["seed"]))
    run_dir = run_folders.own_run_dir(dict(params), notebook)
    run_dir.mkdir(parents=True, exist_ok=True)
    print("run dir:", run_dir)
    return Session(notebook, params, run_dir, plan, train_config, started)
