"""Run a profile's notebooks in order with papermill: `python -m vitprune run`.

Every run gets `runs/<profile>/<notebook>[/<variant>]/` holding the executed notebook,
its `metrics.json` and a `manifest.json` (params and their hash, git sha, package
versions, seed, device, wall time, status). A run is up to date when its manifest says
`ok`, its metrics exist, and its key is unchanged; the key hashes the params, the
notebook file, and the keys of every earlier notebook's runs, so a changed baseline
re-runs everything after it. One run is `study.execution`: papermill into `<run_dir>.partial`,
swapped in when it succeeds, so a failed or interrupted run leaves the last good one untouched.

Runs whose upstream runs are done go side by side while their threads fit the machine's cores
(two 1-thread fine-tunes on 2 cores); a run of several processes or all the cores runs alone.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vitprune.errors import UserError
from vitprune.study import config, results, run_folders
from vitprune.study.execution import (Run, environment, execute, failure, partial_dir, publish_figures,
                                      read_manifest, write_spec)


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


def plan(profile: str, notebooks: list[str], overrides: dict[str, Any], runs_root: Path, seeds: int = 1,
         study: bool = False) -> list[Run]:
    """Expand profiles, sweeps, named points, seeds and overrides into the ordered list of runs
    (validated).

    `seeds` > 1 repeats every SEEDED notebook (the fine-tunes 02-04) over that many seeds, from
    the notebook's own `seed` on, each seed a run of its own; notebook 05 is told which seeds to
    gather (its `seeds` parameter). A notebook's named points (sweep.yaml's `points`, and
    study.yaml's with `study`: the controls, the study's linear rate) run once per seed beside its
    sweep, each in a folder of its name."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise UserError(f"--seeds must be an integer >= 1, got {seeds!r}")
    declared = {nb: config.declared_parameters(nb) for nb in notebooks}
    unused = [key for key in overrides if not any(key in d for d in declared.values())]
    if unused:
        raise UserError(f"-p {unused}: no selected notebook ({', '.join(notebooks)}) declares "
                        f"{'this parameter' if len(unused) == 1 else 'these parameters'}")
    injected_overrides = [key for key in overrides if key in config.INJECTED + config.PIPELINE_SET]
    if injected_overrides:
        raise UserError(f"-p {injected_overrides}: set by the pipeline; use --profile / --runs-root / --seeds "
                        "/ --study instead")
    if "control" in overrides:
        raise UserError("-p control: the controls are runs of their own, named in params/<profile>/sweep.yaml "
                        "(and study.yaml: run --study); the pipeline runs them beside the sweep")
    sweeps = config.profile_sweep(profile)
    named = config.profile_points(profile, study)
    seed_list = _seed_list(profile, overrides, seeds)
    runs = []
    for nb in notebooks:
        base = config.profile_params(profile, nb)
        own = {k: v for k, v in overrides.items() if k in declared[nb]}
        base.update(config.validate(declared[nb], own, "-p override", base.get("plugins") or []))
        # An override of a swept parameter pins the sweep to that single value.
        axes = {k: [base[k]] if k in own else v for k, v in sweeps.get(nb, {}).items()}
        if config.is_seeded(nb):
            axes["seed"] = seed_list
        points = [(None, dict(zip(axes, combo))) for combo in itertools.product(*axes.values())] or [(None, {})]
        points += [(name, {**values, "seed": seed}) for name, values in named.get(nb, {}).items() for seed in seed_list]
        for name, point in points:
            params = {**base, **config.validate(declared[nb], point, f"sweep of {nb}", base.get("plugins") or [])}
            rdir = run_folders.point_run_dir(runs_root, profile, nb, params, name)
            variant = rdir.name if rdir.parent.name == nb else None
            if "seeds" in declared[nb]:
                params["seeds"] = seed_list
            if "study" in declared[nb]:
                params["study"] = study
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
    """What a run's result depends on: its parameters, its notebook's cells, its upstream runs'
    keys and the released files it starts from (by sha256: their path stays the same)."""
    own = {k: v for k, v in run.params.items() if k not in config.INJECTED}
    key = {"params": own, "notebook": notebook_hash(config.notebook_path(run.notebook)),
           "upstream": upstream_keys, "variant": run.variant}
    released = config.released_inputs(run.params)
    if released:
        key["released"] = released
    blob = json.dumps(key, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_up_to_date(run: Run) -> bool:
    """The manifest says ok with this run's key, and the folder holds what it recorded."""
    manifest = read_manifest(run.run_dir)
    if not (manifest and manifest.get("status") == "ok" and manifest.get("key") == run.key
            and (run.run_dir / "metrics.json").exists()):
        return False
    changed = run_folders.changed_files(run.run_dir, manifest)
    if changed:
        print(f"[{run.name}] re-running: {', '.join(changed[:5])} changed since the pipeline wrote the folder "
              "(a notebook run outside the pipeline?)", flush=True)
    return not changed


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
                seeds: int = 1, study: bool = False, jobs: int | None = None) -> list[dict[str, Any]]:
    """Plan, then execute every run that is not up to date, side by side where their threads fit
    the cores (`jobs`: at most this many at once; None: as many as fit; 1: one after the other, in
    this process). Returns one summary per run, in plan order."""
    root = run_folders.runs_root_or_default(runs_root)
    # The repository's figures/ follow only the repository's own runs/; a run elsewhere keeps its
    # figures in its run folder.
    publish = root.resolve() == run_folders.runs_root_or_default(None).resolve()
    runs = plan(profile, select_notebooks(only), overrides or {}, root, seeds, study)
    check_runs_root(root)
    env = environment()
    depends = _keys_and_dependencies(runs, root, profile, seeds, study)
    cores = env.get("cpu_cores") or os.cpu_count() or 1
    # side by side only on CPUs: runs would share a GPU's memory and kernels, not its cores
    side_by_side = jobs != 1 and len(runs) > 1 and not env.get("gpus") and \
        any(_cores_used(r, cores) < cores for r in runs)
    env = {**env, "side_by_side": side_by_side}  # recorded in every manifest: timings of runs that shared the cores
    summaries: dict[str, dict[str, Any]] = {}

    def finish(run: Run, status: str, wall: Any) -> None:
        if status == "ran" and run.notebook == run_folders.FIGURES_NOTEBOOK and publish:
            published = publish_figures(run)
            if published:
                print(f"[{run.name}] figures -> {published}", flush=True)
        summary = headline(run.run_dir)
        when = f"up to date, skipped (took {wall} s)" if status == "up to date" else f"ran in {wall} s"
        print(f"[{run.name}] {when}" + (f": {summary}" if summary else ""), flush=True)
        summaries[run.name] = {"run": run.name, "status": status, "wall_time_s": wall, "run_dir": str(run.run_dir)}

    if side_by_side:
        _run_side_by_side(runs, depends, env, force, cores, jobs or cores, finish)
    else:
        for run in runs:
            if not force and is_up_to_date(run):
                finish(run, "up to date", read_manifest(run.run_dir).get("wall_time_s"))
                continue
            print(f"[{run.name}] running -> {run.run_dir}", flush=True)
            finish(run, "ran", execute(run, env)["wall_time_s"])
    return [summaries[r.name] for r in runs]


def _keys_and_dependencies(runs: list[Run], root: Path, profile: str, seeds: int,
                           study: bool) -> dict[str, list[str]]:
    """Set every run's upstream keys and key (`run_key`); return {run: the runs of this plan it
    reads}, which must finish before it starts: every run of its upstream notebooks (the same
    seed's, for a fine-tune), but for notebook 04 only the two runs it continues
    (`run_folders.combination_inputs`): it starts beside the rest of the sweep, and its key does
    not change when `--study` adds runs it does not read. Upstream notebooks not in the plan are
    read from disk (their manifests' keys)."""
    planned: dict[str, list[Run]] = {}
    for run in runs:
        planned.setdefault(run.notebook, []).append(run)
    available = available_notebooks()
    on_disk: dict[str, list[Run]] = {}
    depends = {}
    for run in runs:
        upstream, needs = [], []
        inputs = _combination_input_dirs(run, root, profile) if run.notebook == run_folders.COMBINATION else {}
        for nb in config.UPSTREAM.get(run.notebook, ()):
            if nb in planned:
                feeding = planned[nb]
            elif nb in available:
                if nb not in on_disk:
                    on_disk[nb] = _runs_on_disk(root, profile, nb, seeds, study)
                feeding = on_disk[nb]
            else:
                feeding = []
            feeding = [r for r in feeding if _same_seed(run, r) and (nb not in inputs or r.run_dir == inputs[nb])]
            if nb in planned:
                needs += [r.name for r in feeding]
            # sorted: the same set of keys whether the upstream ran in this invocation or earlier
            upstream += sorted(r.key for r in feeding)
        run.upstream = upstream
        run.key = run_key(run, upstream)
        depends[run.name] = needs
    return depends


def _combination_input_dirs(run: Run, root: Path, profile: str) -> dict[str, Path]:
    """{notebook: run folder} of the two runs a notebook-04 run continues (none when its notebook
    does not declare what names them)."""
    params = _effective_params(run)
    if not run_folders.COMBINATION_KEYS <= params.keys():
        return {}
    return {nb: run_folders.point_run_dir(root, profile, nb, {**params, **values}, name)
            for nb, (name, values) in run_folders.combination_inputs(params).items()}


def _effective_params(run: Run) -> dict[str, Any]:
    """A run's parameters with the notebook's defaults for what its profile leaves unset."""
    declared = config.declared_parameters(run.notebook)
    return {**{k: p.default for k, p in declared.items()}, **run.params}


def _cores_used(run: Run, cores: int) -> int:
    """How many of the machine's cores a run keeps busy: its threads times its processes; a run on
    several processes or GPUs (`auto`, an accelerate config) takes the machine to itself."""
    params = _effective_params(run)
    processes = params.get("num_processes", 1)
    if processes == "auto" or params.get("launch_config") or not isinstance(processes, int):
        return cores
    return min(cores, max(1, int(params.get("threads", 1))) * processes)


def _run_side_by_side(runs: list[Run], depends: dict[str, list[str]], env: dict[str, Any], force: bool,
                      cores: int, jobs: int, finish) -> None:
    """Start each run (longest chain of waiting runs first) once the runs it reads are done and its
    cores are free (`_cores_used`; at most `jobs` at once), each as a process of its own
    (`python -m vitprune.study.execution`). After a failure no new run starts, the ones under way
    finish, and the first failure is raised; Ctrl-C stops every run under way the same way."""
    # longest chain of waiting runs first (04's two inputs before the rest of the sweep), then the
    # longest runs first, so the last runs end together: a later notebook's (04 trains two models)
    # before an earlier one's, a control (it keeps every token and unit) before a pruned run
    chain = _chain_lengths(depends)
    pending = sorted(runs, key=lambda r: (-chain[r.name], -_stage(r), not r.params.get("control", False)))
    # once per run, not at every poll: each parses its notebook's parameters cell / hashes its inputs
    cores_of = {r.name: _cores_used(r, cores) for r in runs}
    stale: set[str] = set()  # ready runs found not up to date, waiting for cores
    running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    done: set[str] = set()
    errors: list[UserError] = []
    spec_dir = Path(tempfile.mkdtemp(prefix="vitprune-runs-"))
    try:
        while pending or running:
            started = True
            while started and not errors:
                started = False
                busy = sum(cores_of[name] for name in running)
                for run in pending:
                    if not all(name in done for name in depends[run.name]):
                        continue
                    if not force and run.name not in stale:
                        if is_up_to_date(run):
                            pending.remove(run)
                            done.add(run.name)
                            finish(run, "up to date", read_manifest(run.run_dir).get("wall_time_s"))
                            started = True
                            break
                        stale.add(run.name)
                    if running and (busy + cores_of[run.name] > cores or len(running) >= jobs):
                        continue
                    print(f"[{run.name}] running -> {run.run_dir}", flush=True)
                    spec = write_spec(run, env, spec_dir / (run.name.replace("/", "--") + ".json"))
                    proc = subprocess.Popen([sys.executable, "-m", "vitprune.study.execution", str(spec)],
                                            cwd=str(config.project_root()))
                    pending.remove(run)
                    running[run.name] = (run, proc, time.perf_counter())
                    started = True
                    break
            if not running:
                break
            time.sleep(0.2)
            for name, (run, proc, _) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[name]
                done.add(name)
                if code == 0:
                    finish(run, "ran", read_manifest(run.run_dir).get("wall_time_s"))
                elif code == 130:
                    raise KeyboardInterrupt
                else:
                    errors.append(failure(run))
                    print(f"error: {errors[-1]}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        _stop(running)
        raise
    finally:
        for path in spec_dir.glob("*.json"):
            path.unlink()
        spec_dir.rmdir()
    if errors:
        raise errors[0]


def _stage(run: Run) -> int:
    """A run's notebook's place in the study (00 first, 05 last)."""
    return config.NOTEBOOKS.index(run.notebook) if run.notebook in config.NOTEBOOKS else len(config.NOTEBOOKS)


def _chain_lengths(depends: dict[str, list[str]]) -> dict[str, int]:
    """{run: how many runs, itself included, the longest chain of runs waiting on it holds}:
    notebook 05 1, a fine-tune 2, a fine-tune notebook 04 continues 3."""
    waiting: dict[str, list[str]] = {name: [] for name in depends}
    for name, needs in depends.items():
        for need in needs:
            waiting.setdefault(need, []).append(name)
    lengths: dict[str, int] = {}

    def length(name: str) -> int:
        if name not in lengths:
            lengths[name] = 1 + max((length(w) for w in waiting[name]), default=0)
        return lengths[name]

    return {name: length(name) for name in depends}


def _stop(running: dict[str, tuple[Run, subprocess.Popen, float]]) -> None:
    """Ctrl-C or a hang-up: every run under way stops as one run of `run` does (its partial
    notebook and manifest kept, its kernel shut down), then `run` stops."""
    for _, proc, _ in running.values():
        if proc.poll() is None:
            proc.terminate()  # SIGTERM: KeyboardInterrupt in the run's process (execution._main)
    for _, proc, _ in running.values():
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def _runs_on_disk(runs_root: Path, profile: str, notebook: str, seeds: int, study: bool = False) -> list[Run]:
    """The notebook's runs the profile plans (its sweep points, named points and seeds), with the
    keys their manifests on disk record; runs pinned by hand (`-p base_rate=0.65`) are not part of
    the profile and do not count."""
    out = []
    for run in plan(profile, [notebook], {}, runs_root, seeds, study):
        manifest = read_manifest(run.run_dir)
        if manifest:
            run.key = str(manifest.get("key"))
            out.append(run)
    return out


def missing_runs(profile: str, runs_root: str | os.PathLike | None, seeds: int = 1, study: bool = False) -> list[str]:
    """One line per model run (notebooks 01-04) the profile plans that has no finished run in
    its folder, saying why: not run yet, failed (with the error and where the partial notebook
    is), or files there that the pipeline did not write."""
    root = run_folders.runs_root_or_default(runs_root)
    notebooks = [nb for nb in available_notebooks() if nb in results.MODEL_NOTEBOOKS]
    out = []
    for run in plan(profile, notebooks, {}, root, seeds, study):
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
