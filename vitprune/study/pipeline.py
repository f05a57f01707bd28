"""Run a profile's notebooks in order with papermill: `python -m vitprune run`.

Every run gets `runs/<profile>/<notebook>[/<variant>]/` holding the executed notebook,
its `metrics.json` and a `manifest.json` (params and their hash, git sha, package
versions, seed, device, wall time, status). A run is up to date when its manifest says
`ok`, its metrics exist, and its key is unchanged; the key hashes the params, the
notebook file, and the keys of every earlier notebook's runs, so a changed baseline
re-runs everything after it. A run executes in `<run_dir>.partial` and replaces its run
folder only when it succeeds: a failed or interrupted run keeps its partial notebook there,
marked `failed`, and the last good run stays in place, untouched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vitprune import progress
from vitprune.errors import UserError
from vitprune.study import config, results

MANIFEST_FILE = config.MANIFEST_FILE
VERSIONED_PACKAGES = ("vitprune", "torch", "torchvision", "timm", "datasets", "papermill",
                      "accelerate", "fvcore", "numpy")


@dataclass
class Run:
    """One papermill execution: a notebook at one point of its sweep."""

    notebook: str
    variant: str | None
    params: dict[str, Any]
    run_dir: Path
    key: str = ""
    upstream: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.notebook}/{self.variant}" if self.variant else self.notebook


def available_notebooks() -> list[str]:
    root = config.project_root() / "notebooks"
    return [nb for nb in config.NOTEBOOKS if (root / f"{nb}.ipynb").exists()]


def select_notebooks(only: str | None) -> list[str]:
    available = available_notebooks()
    if not only:
        return available
    chosen = [name.strip() for name in only.split(",") if name.strip()]
    for name in chosen:
        if name not in available:
            raise UserError(f"--only {name!r}: no such notebook; available: {', '.join(available)}")
    return [nb for nb in available if nb in chosen]


def plan(profile: str, notebooks: list[str], overrides: dict[str, Any], runs_root: Path, seeds: int = 1) -> list[Run]:
    """Expand profiles, sweeps, seeds and overrides into the ordered list of runs (validated).

    `seeds` > 1 repeats every SEEDED notebook (the fine-tunes 02-04) over that many seeds, from
    the notebook's own `seed` on, each seed a run of its own; notebook 05 is told which seeds to
    gather (its `seeds` parameter)."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {seeds!r}")
    declared = {nb: config.declared_parameters(nb) for nb in notebooks}
    unused = [key for key in overrides if not any(key in d for d in declared.values())]
    if unused:
        raise UserError(f"-p {unused}: no selected notebook ({', '.join(notebooks)}) declares "
                        f"{'this parameter' if len(unused) == 1 else 'these parameters'}")
    injected_overrides = [key for key in overrides if key in config.INJECTED + config.PIPELINE_SET]
    if injected_overrides:
        raise UserError(f"-p {injected_overrides}: set by the pipeline; use --profile / --runs-root / --seeds instead")
    sweeps = config.profile_sweep(profile)
    seed_list = _seed_list(profile, overrides, seeds)
    runs = []
    for nb in notebooks:
        base = config.profile_params(profile, nb)
        own = {k: v for k, v in overrides.items() if k in declared[nb]}
        base.update(config.validate(declared[nb], own, "-p override"))
        # An override of a swept parameter pins the sweep to that single value.
        axes = {k: [base[k]] if k in own else v for k, v in sweeps.get(nb, {}).items()}
        if config.is_seeded(nb):
            axes["seed"] = seed_list
        points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] or [{}]
        for point in points:
            params = {**base, **config.validate(declared[nb], point, f"sweep of {nb}")}
            rdir = config.point_run_dir(runs_root, profile, nb, params)
            variant = rdir.name if rdir.parent.name == nb else None
            if "seeds" in declared[nb]:
                params["seeds"] = seed_list
            params.update(profile=profile, runs_root=str(runs_root), run_dir=str(rdir))
            runs.append(Run(nb, variant, params, rdir))
    return runs


def _seed_list(profile: str, overrides: dict[str, Any], seeds: int) -> list[int]:
    """The fine-tune seeds: `seeds` of them from the SEEDED notebooks' own `seed` (the profile's,
    or `-p seed=S`), which must agree."""
    first = set()
    available = available_notebooks()
    for nb in config.SEEDED:
        if nb in available and config.is_seeded(nb):
            value = overrides.get("seed", config.profile_params(profile, nb).get("seed", 0))
            first.add(int(value))
    if len(first) > 1:
        raise UserError(f"params/{profile}: the fine-tune notebooks {', '.join(config.SEEDED)} start from different "
                        f"seeds {sorted(first)}; give them one `seed` (or pass -p seed=S)")
    start = first.pop() if first else 0
    return [start + i for i in range(seeds)]


def notebook_hash(path: Path) -> str:
    """What a run's key takes from its notebook: each cell's type, tags and source. Outputs and
    metadata a JupyterLab save adds (or papermill's) do not change what the notebook computes."""
    nb = json.loads(path.read_text())
    cells = [[c.get("cell_type"), c.get("metadata", {}).get("tags", []),
              "".join(c["source"]) if isinstance(c.get("source"), list) else c.get("source", "")]
             for c in nb.get("cells", [])]
    return hashlib.sha256(json.dumps(cells).encode()).hexdigest()[:16]


def run_key(run: Run, upstream_keys: list[str]) -> str:
    own = {k: v for k, v in run.params.items() if k not in config.INJECTED}
    blob = json.dumps({"params": own, "notebook": notebook_hash(config.notebook_path(run.notebook)),
                       "upstream": upstream_keys, "variant": run.variant}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / MANIFEST_FILE
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, run_dir / MANIFEST_FILE)


def is_up_to_date(run: Run) -> bool:
    """The manifest says ok with this run's key, and the folder holds what it recorded."""
    manifest = read_manifest(run.run_dir)
    if not (manifest and manifest.get("status") == "ok" and manifest.get("key") == run.key
            and (run.run_dir / "metrics.json").exists()):
        return False
    changed = config.changed_files(run.run_dir, manifest)
    if changed:
        print(f"[{run.name}] re-running: {', '.join(changed[:5])} changed since the pipeline wrote the folder "
              "(a notebook run outside the pipeline?)", flush=True)
    return not changed


def git_sha() -> str:
    try:
        root = config.project_root()
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, Any]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import torch

    from vitprune.train import hardware  # here: torch is imported only once a run starts, not for a bad-input error

    facts = hardware.describe()
    return {"python": platform.python_version(), "platform": platform.platform(), "versions": versions,
            "device": "cuda" if facts["gpus"] else "cpu", "gpus": facts["gpus"], "cpu": facts["cpu"],
            "cpu_capability": facts["cpu_capability"], "torch_threads": torch.get_num_threads(), "git_sha": git_sha()}


def _ipc_kernel_manager() -> type:
    """A jupyter kernel manager whose kernel talks over local IPC sockets instead of TCP on
    localhost: the kernel then does not warn "running over TCP without encryption" on every
    run (its sockets are files in the jupyter runtime dir, removed when the kernel stops)."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets import default

    class IPCKernelManager(AsyncKernelManager):
        @default("transport")
        def _default_transport(self) -> str:
            return "ipc"

        @default("ip")
        def _default_ip(self) -> str:
            # jupyter_client's default socket prefix is "kernel-ipc" in the working directory:
            # two runs started at once from the same folder then pick the same socket files and
            # each kernel gets the other's messages ("Invalid Signature"); one prefix per kernel.
            runtime = Path(jupyter_runtime_dir())
            runtime.mkdir(parents=True, exist_ok=True)
            return str(runtime / f"vitprune-{os.getpid()}-{uuid.uuid4().hex[:12]}")

    return IPCKernelManager


def error_line(exc: BaseException, limit: int = 500) -> str:
    """One console line for a failed notebook: the notebook's own error, not papermill's wrapper.

    A `PapermillExecutionError` carries the kernel's exception name and value: a UserError
    gives its message as it is (it already says what is wrong and how to fix it), any other
    exception `Name: message` (the last line of its traceback). Multi-line messages keep their
    first non-empty line."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename is None:  # raised here, not inside the kernel
        ename, evalue = type(exc).__name__, str(exc)
    lines = [line.strip() for line in str(evalue or "").splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if ename == UserError.__name__ and message:
        text = message
    else:
        text = f"{ename}: {message}" if message else str(ename)
    if len(text) > limit:  # keep both ends: a message starts with what is wrong and ends with the fix
        text = text[: limit * 3 // 5] + " ... " + text[-(limit * 2 // 5):]
    return text


REUSED_SUBDIRS = config.REUSED_SUBDIRS
"""Folders of a good run that a re-run may reuse (engine checkpoints to resume or skip training,
notebook 00's cache). They are hard-linked into the new run's folder, never copied: both are
written only through a temp file or folder and a rename, so the new run never writes through a
link into the old run's files."""


def partial_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + config.PARTIAL_SUFFIX)


def recover(run_dir: Path) -> None:
    """Finish a replacement that was interrupted between its two renames."""
    old = run_dir.with_name(run_dir.name + config.REPLACED_SUFFIX)
    if old.exists():
        if run_dir.exists():
            shutil.rmtree(old)
        else:
            os.rename(old, run_dir)


def _link_new(src: str, dst: str) -> None:
    """`shutil.copytree`'s copy function: hard-link a file the staging folder lacks (a file it
    already has, from an earlier attempt, stays)."""
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links: a copy keeps the old run safe too
        shutil.copy2(src, dst)


def _prepare_staging(run_dir: Path) -> Path:
    staging = partial_dir(run_dir)
    staging.mkdir(parents=True, exist_ok=True)
    (staging / "metrics.json").unlink(missing_ok=True)
    for name in REUSED_SUBDIRS:
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, staging / name, copy_function=_link_new, dirs_exist_ok=True)
    return staging


def _relocate(staging: Path, run_dir: Path) -> None:
    """Paths the notebook wrote into its records (metrics, manifest, the executed notebook's
    parameters) name the staging folder; make them name the run folder it becomes."""
    old, new = str(staging), str(run_dir)
    for path in [*staging.glob("*.json"), *staging.glob("*.ipynb"), *staging.glob("*/*.json")]:
        if path.is_file() and path.stat().st_size < 64 << 20:
            text = path.read_text()
            if old in text:  # a new file, not a write through a hard link into the last good run
                tmp = path.with_name(path.name + ".tmp")
                tmp.write_text(text.replace(old, new))
                os.replace(tmp, path)


def _swap_in(fresh: Path, target: Path) -> None:
    """Replace folder `target` by the finished folder `fresh`: two renames, then drop the old one
    (`recover` finishes the job if the process dies between the renames)."""
    old = target.with_name(target.name + config.REPLACED_SUFFIX)
    recover(target)
    if target.exists():
        os.rename(target, old)
    os.rename(fresh, target)
    shutil.rmtree(old, ignore_errors=True)


def execute(run: Run, env: dict[str, Any]) -> dict[str, Any]:
    """Execute one run with papermill into `<run_dir>.partial`, then put it in place of the run
    folder; on failure or Ctrl-C the run folder is left as it was."""
    import papermill

    recover(run.run_dir)
    try:
        staging = _prepare_staging(run.run_dir)
    except OSError as exc:
        raise UserError(f"cannot write the run folder {run.run_dir.parent}: {exc.strerror or exc}; "
                        f"choose a writable --runs-root") from exc
    output = staging / f"{run.notebook}.ipynb"
    manifest = {"notebook": run.notebook, "variant": run.variant, "profile": run.params["profile"],
                "params": run.params, "params_hash": config.params_hash(run.params), "key": run.key,
                "upstream_keys": run.upstream, "seed": run.params.get("seed"), "output": str(output),
                "num_processes": run.params.get("num_processes", 1),
                "mixed_precision": run.params.get("mixed_precision", "no"),
                "launch_config": run.params.get("launch_config") or None,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running", **env}
    write_manifest(staging, manifest)
    start = time.perf_counter()
    try:
        with progress.kernel_env():  # text progress bars in the executed notebook
            papermill.execute_notebook(str(config.notebook_path(run.notebook)), str(output),
                                       parameters={**run.params, "run_dir": str(staging)},
                                       cwd=str(config.project_root()),
                                       kernel_name="python3", progress_bar=False,
                                       coalesce_streams=True,  # one stdout / stderr box per cell, bars at their last state
                                       kernel_manager_class=_ipc_kernel_manager())
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        manifest.update(status="interrupted" if interrupted else "failed",
                        error="interrupted (Ctrl-C or hang-up)" if interrupted else error_line(exc),
                        wall_time_s=round(time.perf_counter() - start, 2))
        write_manifest(staging, manifest)
        if interrupted:
            raise
        raise UserError(f"{run.name} failed: {manifest['error']} (the partial notebook is at {output}; "
                        f"the last good run in {run.run_dir} is untouched)") from exc
    manifest.update(status="ok", wall_time_s=round(time.perf_counter() - start, 2))
    if not (staging / "metrics.json").exists():
        manifest.update(status="failed", error="notebook finished without writing metrics.json")
        write_manifest(staging, manifest)
        raise UserError(f"{run.name} finished without writing metrics.json (see {output})")
    measured = results.read_metrics(staging)  # what `auto` resolved to, as the notebook ran it
    manifest.update({k: measured[k] for k in ("num_processes", "mixed_precision", "device") if k in measured})
    write_manifest(staging, manifest)
    _relocate(staging, run.run_dir)  # also points the manifest's "output" at the run folder
    manifest = read_manifest(staging)
    manifest["files"] = config.run_files(staging)  # renames keep sizes and mtimes
    write_manifest(staging, manifest)
    _swap_in(staging, run.run_dir)
    return manifest


def publish_figures(run: Run) -> Path | None:
    """Copy a finished notebook-05 run's figures folder over `figures/<profile>[-<n>seeds]/` of
    the repository, whole: written beside it, then swapped in by renames (None: it drew none)."""
    source = run.run_dir / config.FIGURES_SUBDIR
    if not source.is_dir():
        return None
    target = config.figures_dir(run.params["profile"], len(run.params.get("seeds") or [0]))
    fresh = target.with_name(target.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(source, fresh)
    _swap_in(fresh, target)
    return target


def headline(run_dir: Path) -> str:
    """A one-line summary of a run's metrics for the console."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return ""
    parts = []
    if "top1" in metrics:
        parts.append(f"top-1 {metrics['top1']:.2f} %")
    if "macs" in metrics:
        parts.append(f"{metrics['macs'] / 1e6:.2f} M MACs")
    if "params" in metrics:
        parts.append(f"{metrics['params'] / 1e6:.3f} M params")
    if "counts" in metrics and isinstance(metrics["counts"], dict):
        parts.append("images " + ", ".join(f"{k} {v}" for k, v in metrics["counts"].items()))
    return "; ".join(parts)


def run_profile(profile: str, only: str | None = None, force: bool = False,
                overrides: dict[str, Any] | None = None, runs_root: str | None = None,
                seeds: int = 1) -> list[dict[str, Any]]:
    """Plan, then execute every run that is not up to date. Returns one summary per run."""
    root = config.runs_root_or_default(runs_root)
    # The repository's figures/ follow only the repository's own runs/; a run elsewhere keeps its
    # figures in its run folder.
    publish = root.resolve() == config.runs_root_or_default(None).resolve()
    runs = plan(profile, select_notebooks(only), overrides or {}, root, seeds)
    check_runs_root(root)
    env = environment()
    done: dict[str, list[Run]] = {}  # runs of this invocation by notebook; the others are read from disk
    available = available_notebooks()
    summaries = []
    for run in runs:
        upstream = []
        for nb in config.UPSTREAM.get(run.notebook, ()):
            if nb not in done and nb in available:
                done[nb] = _runs_on_disk(root, profile, nb, seeds)
            # sorted: the same set of keys whether the upstream ran in this invocation or earlier
            upstream += sorted(r.key for r in done.get(nb, []) if _same_seed(run, r))
        run.upstream = upstream
        run.key = run_key(run, upstream)
        if not force and is_up_to_date(run):
            status, wall = "up to date", read_manifest(run.run_dir).get("wall_time_s")
        else:
            print(f"[{run.name}] running -> {run.run_dir}", flush=True)
            wall = execute(run, env)["wall_time_s"]
            status = "ran"
            published = publish_figures(run) if run.notebook == config.FIGURES_NOTEBOOK and publish else None
            if published:
                print(f"[{run.name}] figures -> {published}", flush=True)
        summary = headline(run.run_dir)
        when = f"up to date, skipped (took {wall} s)" if status == "up to date" else f"ran in {wall} s"
        print(f"[{run.name}] {when}" + (f": {summary}" if summary else ""), flush=True)
        done.setdefault(run.notebook, []).append(run)
        summaries.append({"run": run.name, "status": status, "wall_time_s": wall, "run_dir": str(run.run_dir)})
    return summaries


def check_runs_root(root: Path) -> None:
    """Before any kernel starts: the runs root is a folder this process can write in."""
    if root.exists() and not root.is_dir():
        raise UserError(f"--runs-root {root} is a file; give a folder (it is created if missing)")
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write in the runs root {root} ({exc.strerror or exc}); "
                        f"choose a writable folder with --runs-root") from exc


def _same_seed(run: Run, upstream: Run) -> bool:
    """Whether `upstream` feeds `run`: always, except that a seeded run reads only its own seed's
    runs of a seeded notebook."""
    both = "seed" in run.params and "seed" in upstream.params and \
        run.notebook in config.SEEDED and upstream.notebook in config.SEEDED
    return not both or run.params["seed"] == upstream.params["seed"]


def _runs_on_disk(runs_root: Path, profile: str, notebook: str, seeds: int) -> list[Run]:
    """The notebook's runs the profile plans (its sweep points and seeds), with the keys their
    manifests on disk record; runs pinned by hand (`-p base_rate=0.65`) are not part of the
    profile and do not count."""
    out = []
    for run in plan(profile, [notebook], {}, runs_root, seeds):
        manifest = read_manifest(run.run_dir)
        if manifest:
            run.key = str(manifest.get("key"))
            out.append(run)
    return out


def missing_runs(profile: str, runs_root: str | os.PathLike | None, seeds: int = 1) -> list[str]:
    """One line per model run (notebooks 01-04) the profile plans that has no finished run in
    its folder, saying why: not run yet, failed (with the error and where the partial notebook
    is), or files there that the pipeline did not write."""
    root = config.runs_root_or_default(runs_root)
    notebooks = [nb for nb in available_notebooks() if nb in results.MODEL_NOTEBOOKS]
    out = []
    for run in plan(profile, notebooks, {}, root, seeds):
        manifest = read_manifest(run.run_dir)
        if manifest and manifest.get("status") == "ok" and (run.run_dir / "metrics.json").exists():
            continue
        partial = read_manifest(partial_dir(run.run_dir))
        if partial and partial.get("status") in ("failed", "interrupted"):
            why = f"{partial['status']}: {partial.get('error', '?')} (partial notebook in {partial_dir(run.run_dir)})"
        elif partial and partial.get("status") == "running":
            why = f"running, or stopped without a word (see {partial_dir(run.run_dir)})"
        elif run.run_dir.exists():
            why = "its folder holds files the pipeline did not finish (no manifest saying ok)"
        else:
            why = "not run yet"
        out.append(f"{run.name}: {why}; `python -m vitprune run --profile {profile} --only {run.notebook}`")
    return out
