"""Run folders and what a finished run left in them: where each notebook's runs go
(`runs/<profile>/<notebook>[/<variant>]`, the lab's `runs/<profile>/lab/...`, the `.partial` twin a
run executes in), the files a manifest records, per-run training state and the published
figures. The profile's parameters and sweeps that name the folders are `study.config`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from vitprune.errors import UserError
from vitprune.study.config import is_seeded, params_hash, point_axes, point_named, project_root


def runs_root_or_default(runs_root: str | os.PathLike | None) -> Path:
    return Path(runs_root).resolve() if runs_root else project_root() / "runs"


def variant_name(values: dict[str, Any]) -> str:
    """Directory name of a sweep point, e.g. {"base_rate": 0.7, "seed": 1} -> "base_rate_0.7__seed_1"
    (keys sorted, the seed last)."""
    return "__".join(f"{key}_{values[key]}" for key in sorted(values, key=lambda k: (k == "seed", k)))


def point_run_dir(runs_root: str | os.PathLike | None, profile: str, notebook: str,
                  values: dict[str, Any], point: str | None = None) -> Path:
    """The run folder of `notebook` at the parameter `values` (at least its `point_axes`), as the
    pipeline names it: `02_token_pruning/base_rate_0.7__seed_0` in fmnist, `02_token_pruning/seed_0`
    in a profile that does not sweep 02; a named `point` (sweep.yaml's `points`) is
    `02_token_pruning/control__seed_0`. Notebooks use it for their own default run folder and for
    the upstream runs they read."""
    if point is not None:
        seed = {"seed": values["seed"]} if is_seeded(notebook) else {}
        return run_dir(runs_root, profile, notebook, "__".join([point] + ([variant_name(seed)] if seed else [])))
    axes = point_axes(profile, notebook)
    missing = [k for k in axes if k not in values]
    if missing:
        raise UserError(f"{notebook}'s runs in profile {profile!r} are named by {axes}; no value for {missing}")
    point = {k: values[k] for k in axes}
    return run_dir(runs_root, profile, notebook, variant_name(point) if point else None)


COMBINATION = "04_combination"
COMBINATION_KEYS = {"seed", "base_rate", "block_mac_ratio"}  # the parameters that name its inputs


def combination_inputs(params: dict[str, Any]) -> dict[str, tuple[str | None, dict[str, Any]]]:
    """The single-method runs notebook 04 continues, as {notebook: (named point, sweep values)}: 02's
    run at its `base_rate` and 03's at its `block_mac_ratio` (their controls for a control run), both
    at its seed. The notebook reads them (`Session.upstream`) and the pipeline starts 04 as soon as
    these two are done."""
    seed = {"seed": params["seed"]}
    if params.get("control"):
        return {"02_token_pruning": ("control", seed), "03_block_pruning": ("control", seed)}
    return {"02_token_pruning": (None, {"base_rate": params["base_rate"], **seed}),
            "03_block_pruning": (None, {"target_mac_ratio": params["block_mac_ratio"], **seed})}


def run_dir(runs_root: str | os.PathLike | None, profile: str, notebook: str,
            variant: str | None = None) -> Path:
    """Where a notebook's executed copy, metrics.json and manifest live."""
    path = runs_root_or_default(runs_root) / profile / notebook
    return path / variant if variant else path


LAB = "lab"
"""A notebook run not started by the pipeline (JupyterLab, papermill by hand: `run_dir` not
injected) writes under `<runs_root>/<profile>/lab/<notebook>[/<variant>]`, never into the
pipeline's run folders, which only the pipeline writes (with their manifest)."""


def _lab_twin(params: dict[str, Any], pipeline_dir: Path) -> Path:
    """The lab's folder for a pipeline run folder: <runs_root>/<profile>/lab/<the same relative path>."""
    profile_root = runs_root_or_default(params.get("runs_root")) / params["profile"]
    return profile_root / LAB / pipeline_dir.relative_to(profile_root)


def own_run_dir(params: dict[str, Any], notebook: str) -> Path:
    """This run's folder: the injected `run_dir`, or the lab folder at the notebook's point."""
    if params.get("run_dir"):
        return Path(params["run_dir"])
    named = point_named(params["profile"], notebook, params)
    return _lab_twin(params, point_run_dir(params.get("runs_root"), params["profile"], notebook, params, named))


def upstream_run_dir(params: dict[str, Any], notebook: str, point: dict[str, Any], name: str | None = None) -> Path:
    """The run folder of an earlier notebook that this run reads (at sweep `point`, or the named
    point `name`): for a lab run, the lab's own run of it when one finished (it wrote
    metrics.json), else the pipeline's."""
    pipeline_dir = point_run_dir(params.get("runs_root"), params["profile"], notebook, point, name)
    if params.get("run_dir"):
        return pipeline_dir
    lab_dir = _lab_twin(params, pipeline_dir)
    return lab_dir if (lab_dir / "metrics.json").is_file() else pipeline_dir


PARTIAL_SUFFIX = ".partial"
"""A run executes in `<run_dir>.partial` beside its run folder and replaces the folder only when
it succeeds (`execution.execute`); a failed or interrupted run stays there (partial notebook,
manifest with the error, training state to resume from), and the last good run stays what
everything reads. Readers of a runs tree skip these folders."""
REPLACED_SUFFIX = ".replaced"  # the old run folder, for the moment between two renames
NOT_RUN_FOLDERS = (PARTIAL_SUFFIX, REPLACED_SUFFIX, ".new")


def run_folders(runs_root: str | os.PathLike | None, profile: str, notebook: str) -> list[Path]:
    """The folders on disk that may hold a run of `notebook`: its folder and its variant folders
    (not the `.partial` / `.replaced` ones)."""
    base = runs_root_or_default(runs_root) / profile / notebook
    if not base.is_dir():
        return []
    return [base] + sorted(p for p in base.glob("*") if p.is_dir() and not p.name.endswith(NOT_RUN_FOLDERS))

REUSED_SUBDIRS = ("train_state", "dataset")  # a new run of a folder starts from hard links to these
MANIFEST_FILE = "manifest.json"


def run_files(run_dir: Path) -> dict[str, list[int]]:
    """{path in the run folder: [size, mtime in ns]} of what a finished run wrote (not the manifest
    and not REUSED_SUBDIRS, which later runs keep using): the pipeline records it in the manifest,
    and a folder whose files no longer match (a notebook run by hand wrote into it) is neither
    up to date nor read as a run."""
    out = {}
    for folder, subfolders, files in os.walk(run_dir):
        if folder == str(run_dir):
            subfolders[:] = [d for d in subfolders if d not in REUSED_SUBDIRS]  # not walked at all
        for name in files:
            rel = os.path.relpath(os.path.join(folder, name), run_dir)
            if rel != MANIFEST_FILE:
                stat = os.stat(os.path.join(folder, name))
                out[Path(rel).as_posix()] = [stat.st_size, stat.st_mtime_ns]
    return dict(sorted(out.items()))


def changed_files(run_dir: Path, manifest: dict[str, Any]) -> list[str]:
    """The files of a run folder that differ from what its manifest recorded (added, gone or
    rewritten); a manifest from before files were recorded counts every file as changed."""
    recorded = manifest.get("files")
    now = run_files(run_dir)
    if not isinstance(recorded, dict):
        return sorted(now) or ["(no files recorded)"]
    return sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))


FIGURES_NOTEBOOK = "05_analysis"
FIGURES_SUBDIR = "figures"  # notebook 05 writes Table 1, the figures and the audit here in its run folder


def figures_dir(profile: str, n_seeds: int = 1) -> Path:
    """Where the pipeline publishes notebook 05's figures when it runs under the repository's own
    runs/: `figures/<profile>/` for a one-seed run (`make reproduce`), `figures/<profile>-<n>seeds/`
    for the seeded study, so the two never overwrite each other."""
    return project_root() / "figures" / (profile if n_seeds == 1 else f"{profile}-{n_seeds}seeds")


def train_state_dir(run_dir: str | os.PathLike, settings: dict[str, Any],
                    sources: Sequence[str | os.PathLike] = ()) -> Path:
    """Where engine.train keeps a run's per-epoch checkpoint: `<run_dir>/train_state/<hash>`,
    keyed by the settings that shape training and by the checkpoints it starts from (size and
    modification time of each `sources` file). An interrupted run with the same key resumes;
    a re-run with changed settings or a retrained starting model starts afresh instead of
    tripping over the old state."""
    stamps = []
    for src in sources:
        stat = Path(src).stat()
        stamps.append([str(src), stat.st_size, stat.st_mtime_ns])
    return Path(run_dir) / "train_state" / params_hash({"settings": settings, "sources": stamps})
