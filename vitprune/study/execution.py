"""One run of a notebook: papermill executes it into `<run_dir>.partial`, which replaces the run
folder only when the run succeeds; its manifest records what it ran with and every file it wrote.

A failed or interrupted run keeps its partial notebook in the `.partial` twin, marked `failed`,
and the last good run stays in place, untouched. `study.pipeline` plans the runs and calls
`execute` for each one that is not up to date.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from vitprune import progress
from vitprune.errors import UserError
from vitprune.study import config, results, run_folders

MANIFEST_FILE = run_folders.MANIFEST_FILE
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
            "cpu_capability": facts["cpu_capability"], "cpu_cores": facts["cpu_cores"],
            "torch_threads": torch.get_num_threads(), "git_sha": git_sha()}


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


REUSED_SUBDIRS = run_folders.REUSED_SUBDIRS
"""Folders of a good run that a re-run may reuse (engine checkpoints to resume or skip training,
notebook 00's cache). They are hard-linked into the new run's folder, never copied: both are
written only through a temp file or folder and a rename, so the new run never writes through a
link into the old run's files."""


def partial_dir(run_dir: Path) -> Path:
    return run_dir.with_name(run_dir.name + run_folders.PARTIAL_SUFFIX)


def recover(run_dir: Path) -> None:
    """Finish a replacement that was interrupted between its two renames."""
    old = run_dir.with_name(run_dir.name + run_folders.REPLACED_SUFFIX)
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
    old = target.with_name(target.name + run_folders.REPLACED_SUFFIX)
    recover(target)
    if target.exists():
        os.rename(target, old)
    os.rename(fresh, target)
    shutil.rmtree(old, ignore_errors=True)


def failure(run: Run, manifest: dict[str, Any] | None = None) -> UserError:
    """The one line that says a run failed: the notebook's own error (its partial manifest's), where
    the partial notebook is, and that the last good run is untouched."""
    manifest = manifest or read_manifest(partial_dir(run.run_dir)) or {}
    error = manifest.get("error") or "it stopped without a word (killed?)"
    where = manifest.get("output") or partial_dir(run.run_dir)
    return UserError(f"{run.name} failed: {error} (the partial notebook is at {where}; "
                     f"the last good run in {run.run_dir} is untouched)")


def cell_progress(name: str, stream=None) -> dict[str, Any] | bool:
    """papermill's cell bar, named by the run, on stdout beside the run's other lines (stderr keeps
    its one-line errors), redrawn live on a terminal. In a log (not a terminal) there is no bar:
    the pipeline's own lines say when each run starts and ends, one line each."""
    stream = stream or sys.stdout
    if not stream.isatty():
        return False
    return {"desc": f"[{name}] cells", "unit": "cell", "file": stream, "leave": False, "dynamic_ncols": True,
            "mininterval": 1.0}


def execute(run: Run, env: dict[str, Any]) -> dict[str, Any]:
    """Execute one run with papermill into `<run_dir>.partial`, then put it in place of the run
    folder; on failure or Ctrl-C the run folder is left as it was."""
    # papermill -> nbformat -> jsonschema imports rfc3987_syntax when it is installed (a URI format
    # checker notebooks never use) and builds ~40 lark grammars for it: 3 s of every run's start here
    sys.modules.setdefault("rfc3987_syntax", None)  # None: `import rfc3987_syntax` fails, jsonschema skips it
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
                                       kernel_name="python3", progress_bar=cell_progress(run.name),
                                       coalesce_streams=True,  # one stdout / stderr box per cell, bars at their last state
                                       kernel_manager_class=_ipc_kernel_manager(),
                                       # jupyter_client interrupts every kernel it shuts down; one busy
                                       # with the shutdown message logs a spurious "KeyboardInterrupt
                                       # caught in kernel" ERROR. Cell errors reach us as messages.
                                       extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        manifest.update(status="interrupted" if interrupted else "failed",
                        error="interrupted (Ctrl-C or hang-up)" if interrupted else error_line(exc),
                        wall_time_s=round(time.perf_counter() - start, 2))
        write_manifest(staging, manifest)
        if interrupted:
            raise
        raise failure(run, manifest) from exc
    manifest.update(status="ok", wall_time_s=round(time.perf_counter() - start, 2))
    if not (staging / "metrics.json").exists():
        manifest.update(status="failed", error="the notebook finished without writing metrics.json")
        write_manifest(staging, manifest)
        raise failure(run, manifest)
    measured = results.read_metrics(staging)  # what `auto` resolved to, as the notebook ran it
    manifest.update({k: measured[k] for k in ("num_processes", "mixed_precision", "device") if k in measured})
    write_manifest(staging, manifest)
    _relocate(staging, run.run_dir)  # also points the manifest's "output" at the run folder
    manifest = read_manifest(staging)
    manifest["files"] = run_folders.run_files(staging)  # renames keep sizes and mtimes
    write_manifest(staging, manifest)
    _swap_in(staging, run.run_dir)
    return manifest


def publish_figures(run: Run) -> Path | None:
    """Copy a finished notebook-05 run's figures folder over `figures/<profile>[-<n>seeds]/` of
    the repository, whole: written beside it, then swapped in by renames (None: it drew none)."""
    source = run.run_dir / run_folders.FIGURES_SUBDIR
    if not source.is_dir():
        return None
    target = run_folders.figures_dir(run.params["profile"], len(run.params.get("seeds") or [0]))
    fresh = target.with_name(target.name + ".new")
    shutil.rmtree(fresh, ignore_errors=True)
    shutil.copytree(source, fresh)
    _swap_in(fresh, target)
    return target


# ------------------------------------------------------------------ one run in a process of its own
#
# `run` starts runs that can share the machine (1-thread CPU runs on a 2-core machine) side by side,
# each as `python -m vitprune.study.execution SPEC.json` (SPEC: the run and the environment record):
# a process of its own, so Ctrl-C or a closed terminal stops each run the way it stops a run of
# `run` itself (KeyboardInterrupt in its main thread: the partial notebook is kept, the kernel shut
# down, the manifest says interrupted). Exit status: 0 done, 2 failed (the partial manifest holds the
# error line), 130 interrupted.

def write_spec(run: Run, env: dict[str, Any], path: Path) -> Path:
    path.write_text(json.dumps({"run": {"notebook": run.notebook, "variant": run.variant, "params": run.params,
                                        "run_dir": str(run.run_dir), "key": run.key, "upstream": run.upstream},
                                "env": env}, default=str))
    return path


def _main(argv: list[str]) -> int:
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGHUP", "SIGTERM"):  # a closed terminal or a parent stopping us: stop as Ctrl-C does
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), interrupt)
    spec = json.loads(Path(argv[0]).read_text())
    run = Run(**{**spec["run"], "run_dir": Path(spec["run"]["run_dir"])})
    try:
        execute(run, spec["env"])
    except UserError:
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
