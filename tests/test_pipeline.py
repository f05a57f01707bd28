"""The papermill pipeline on a toy project: order, sweeps, skipping, failures, manifests."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vitprune.__main__ import main as cli
from vitprune.errors import UserError
from vitprune.study import execution, pipeline, run_folders

PARAMS = 'profile: str = "fmnist"\nruns_root: str = ""\nrun_dir: str = ""\n'
BODY = '''
import json, pathlib, time
started = time.time()
if fail:
    raise RuntimeError("asked to fail")
if globals().get("user_error"):
    from vitprune.errors import UserError
    raise UserError(user_error + chr(10) + "second line")
if globals().get("sleep"):
    pathlib.Path(run_dir, "started").write_text("")
    import time; time.sleep(sleep)
pathlib.Path(run_dir).mkdir(parents=True, exist_ok=True)
pathlib.Path(run_dir, "metrics.json").write_text(json.dumps({"top1": value * 10, "value": value, "where": run_dir,
                                                             "started": started, "ended": time.time()}))
'''


def notebook(params: str, extra: str = "") -> dict:
    cells = [{"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": PARAMS + params,
              "outputs": [], "execution_count": None, "id": "p"},
             {"cell_type": "code", "metadata": {}, "source": BODY + extra, "outputs": [], "execution_count": None,
              "id": "b"}]
    return {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A project with notebooks 00 and 02 (02 swept over base_rate) and a `toy` profile."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks/00_data_cache.ipynb").write_text(
        json.dumps(notebook("value: int = 1\nfail: bool = False\nuser_error: str = ''\nsleep: float = 0.0\n"
                            "threads: int = 2\n")))
    (tmp_path / "notebooks/02_token_pruning.ipynb").write_text(
        json.dumps(notebook("value: float = 0.5\nbase_rate: float = 0.7\nfail: bool = False\nsleep: float = 0.0\n"
                            "threads: int = 2\n")))
    prof = tmp_path / "params/toy"
    prof.mkdir(parents=True)
    (prof / "00_data_cache.yaml").write_text("value: 2\n")
    (prof / "sweep.yaml").write_text("02_token_pruning:\n  base_rate: [0.9, 0.5]\n")
    monkeypatch.setenv("VITPRUNE_ROOT", str(tmp_path))
    return tmp_path


def manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_runs_in_order_with_sweep_then_skips(toy, capsys):
    runs = toy / "runs"
    first = pipeline.run_profile("toy", runs_root=str(runs))
    assert [s["run"] for s in first] == ["00_data_cache", "02_token_pruning/base_rate_0.9",
                                         "02_token_pruning/base_rate_0.5"]
    assert all(s["status"] == "ran" for s in first)
    m = manifest(runs / "toy/00_data_cache")
    assert m["status"] == "ok" and m["params"]["value"] == 2 and m["versions"]["torch"]
    assert {"git_sha", "params_hash", "wall_time_s", "device", "seed"} <= set(m)
    assert (runs / "toy/02_token_pruning/base_rate_0.9/02_token_pruning.ipynb").exists()
    assert manifest(runs / "toy/02_token_pruning/base_rate_0.9")["params"]["base_rate"] == 0.9

    again = pipeline.run_profile("toy", runs_root=str(runs))
    assert all(s["status"] == "up to date" for s in again)
    forced = pipeline.run_profile("toy", only="00_data_cache", force=True, runs_root=str(runs))
    assert forced[0]["status"] == "ran"
    assert "top-1 20.00 %" in capsys.readouterr().out


def test_upstream_change_reruns_downstream(toy):
    runs = str(toy / "runs")
    pipeline.run_profile("toy", runs_root=runs)
    changed = pipeline.run_profile("toy", overrides={"value": 3}, runs_root=runs)
    assert all(s["status"] == "ran" for s in changed)  # 00 changed, so both 02 runs are stale
    pinned = pipeline.run_profile("toy", only="02_token_pruning", overrides={"value": 3, "base_rate": 0.6},
                                  runs_root=runs)
    assert [s["run"] for s in pinned] == ["02_token_pruning/base_rate_0.6"]


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_run_leaves_the_last_good_run_byte_identical(toy):
    runs = toy / "runs"
    rdir, partial = runs / "toy/00_data_cache", runs / "toy/00_data_cache.partial"
    pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))
    good = _files(rdir)
    # paths the notebook recorded name the run folder, not the staging folder it ran in
    assert json.loads(good["metrics.json"])["where"] == str(rdir) and not partial.exists()
    with pytest.raises(UserError, match="00_data_cache failed: RuntimeError: asked to fail .*is untouched"):
        pipeline.run_profile("toy", only="00_data_cache", overrides={"fail": True}, runs_root=str(runs))
    assert _files(rdir) == good
    assert manifest(partial)["status"] == "failed" and manifest(partial)["error"] == "RuntimeError: asked to fail"
    assert "asked to fail" in (partial / "00_data_cache.ipynb").read_text()
    assert not (partial / "metrics.json").exists()
    assert [r["status"] for r in pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))] == ["up to date"]
    again = pipeline.run_profile("toy", only="00_data_cache", overrides={"value": 3}, runs_root=str(runs))
    assert again[0]["status"] == "ran" and not partial.exists()
    assert json.loads((rdir / "metrics.json").read_text())["value"] == 3


def test_a_failed_first_run_is_not_done_and_table_says_why(toy):
    runs = toy / "runs"
    with pytest.raises(UserError):
        pipeline.run_profile("toy", only="02_token_pruning", overrides={"fail": True}, runs_root=str(runs))
    assert not (runs / "toy/02_token_pruning/base_rate_0.9").exists()
    missing = pipeline.missing_runs("toy", runs)
    assert len(missing) == 2 and "failed: RuntimeError: asked to fail" in missing[0]
    assert "base_rate_0.9.partial" in missing[0] and "--only 02_token_pruning" in missing[0]


def test_ctrl_c_keeps_the_last_good_run(toy, monkeypatch, capsys):
    import papermill

    runs = toy / "runs"
    pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))
    good = _files(runs / "toy/00_data_cache")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(papermill, "execute_notebook", interrupted)
    monkeypatch.chdir(toy)
    assert cli(["run", "--profile", "toy", "--only", "00_data_cache", "--force", "--runs-root", str(runs)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("interrupted: `run` stopped; finished runs and the last good run")
    assert _files(runs / "toy/00_data_cache") == good
    assert manifest(runs / "toy/00_data_cache.partial")["status"] == "interrupted"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_hang_up_stops_a_run_in_one_line_and_keeps_the_good_run(toy):
    runs = toy / "runs"
    pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))
    good = _files(runs / "toy/00_data_cache")
    proc = subprocess.Popen([sys.executable, "-m", "vitprune", "run", "--profile", "toy", "--only", "00_data_cache",
                             "--runs-root", str(runs), "-p", "sleep=60"], cwd=toy, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    started = runs / "toy/00_data_cache.partial/started"
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert started.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1].startswith("interrupted: `run` stopped")
    assert _files(runs / "toy/00_data_cache") == good


@pytest.mark.parametrize("text, fragment", [
    ("02_token_pruning: {base_rate: [0.9, 0.5]\n", "sweep.yaml: not valid YAML at line 2"),
    ("- 02_token_pruning\n", "sweep.yaml: must be a mapping of notebook: {param: [values]}, found a list"),
    ("02_token_pruning: {base_rate: [0.9, 1.5]}\n", "parameter 'base_rate' must be in (0, 1], got 1.5"),
])
def test_a_broken_sweep_file_is_one_line(toy, text, fragment, capsys):
    (toy / "params/toy/sweep.yaml").write_text(text)
    assert cli(["run", "--profile", "toy", "--runs-root", str(toy / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err
    assert not (toy / "runs/toy").exists()


def test_a_runs_root_that_is_a_file_or_read_only_is_one_line(toy, capsys):
    afile = toy / "afile"
    afile.write_text("")
    assert cli(["run", "--profile", "toy", "--runs-root", str(afile)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --runs-root {afile} is a file; give a folder (it is created if missing)"
    if os.geteuid() != 0:  # root writes anywhere; the permission case needs a normal user
        ro = toy / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        assert cli(["run", "--profile", "toy", "--runs-root", str(ro)]) == 2
        assert "cannot write in the runs root" in capsys.readouterr().err


def test_the_error_line_keeps_the_fix_at_the_end_of_a_long_message():
    exc = UserError("checkpoint is deit_tiny, the notebook wants deit_small: " + "x" * 900 + " fix: set model_name")
    line = execution.error_line(exc)
    assert len(line) <= 505 and line.startswith("checkpoint is deit_tiny") and line.endswith("fix: set model_name")


@pytest.mark.parametrize("overrides, fragment", [
    ({"valu": 1}, "no selected notebook"),
    ({"value": "high"}, "'value' must be int"),
    ({"run_dir": "/tmp"}, "set by the pipeline"),
])
def test_bad_overrides_fail_before_anything_runs(toy, overrides, fragment):
    with pytest.raises(UserError, match=fragment):
        pipeline.run_profile("toy", only="00_data_cache", overrides=overrides, runs_root=str(toy / "runs"))
    assert not (toy / "runs").exists()


def test_unknown_yaml_key_and_profile(toy):
    (toy / "params/toy/00_data_cache.yaml").write_text("value: 2\nepochs: 3\n")
    with pytest.raises(UserError, match=r"unknown parameter\(s\) \['epochs'\]"):
        pipeline.run_profile("toy", runs_root=str(toy / "runs"))
    with pytest.raises(UserError, match="unknown profile 'nope'"):
        pipeline.run_profile("nope", runs_root=str(toy / "runs"))


def test_cli_prints_one_error_line(toy):
    proc = subprocess.run([sys.executable, "-m", "vitprune", "run", "--profile", "toy", "-p", "valu=1"],
                          capture_output=True, text=True, cwd=toy)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: -p ['valu']")


@pytest.mark.slow
def test_only_a_downstream_notebook_after_a_full_run_is_up_to_date(toy):
    """Its upstream keys are the same set whether the swept notebook ran in this invocation or
    earlier, and a hand-pinned extra run of that notebook does not make it stale."""
    (toy / "notebooks/04_combination.ipynb").write_text(json.dumps(notebook("value: int = 0\nfail: bool = False\n")))
    runs = str(toy / "runs")
    pipeline.run_profile("toy", runs_root=runs)
    pipeline.run_profile("toy", only="02_token_pruning", overrides={"base_rate": 0.6}, runs_root=runs)
    again = pipeline.run_profile("toy", only="04_combination", runs_root=runs)
    assert [(s["run"], s["status"]) for s in again] == [("04_combination", "up to date")]


@pytest.mark.slow
def test_seeds_repeat_the_fine_tunes_and_pair_them_by_seed(toy):
    """--seeds N: every seeded notebook once per seed (a run folder each); a seed's run reads only the
    same seed's upstream runs, so a one-seed run after the seeded study is up to date; 05 is told the seeds."""
    seeded = "value: float = 0.5\nbase_rate: float = 0.7\nfail: bool = False\nseed: int = 0\n"
    (toy / "notebooks/02_token_pruning.ipynb").write_text(json.dumps(notebook(seeded)))
    (toy / "notebooks/04_combination.ipynb").write_text(json.dumps(notebook("value: int = 0\nfail: bool = False\nseed: int = 0\n")))
    (toy / "notebooks/05_analysis.ipynb").write_text(json.dumps(notebook("value: int = 0\nfail: bool = False\nseeds: list[int] = [0]\n")))
    (toy / "params/toy/sweep.yaml").write_text("02_token_pruning:\n  base_rate: [0.9]\n")
    runs = toy / "runs"
    study = pipeline.run_profile("toy", runs_root=str(runs), seeds=2)
    assert [s["run"] for s in study] == [
        "00_data_cache", "02_token_pruning/base_rate_0.9__seed_0", "02_token_pruning/base_rate_0.9__seed_1",
        "04_combination/seed_0", "04_combination/seed_1", "05_analysis"]
    keys = {s: manifest(runs / "toy/02_token_pruning" / f"base_rate_0.9__seed_{s}")["key"] for s in (0, 1)}
    upstream = manifest(runs / "toy/04_combination/seed_1")["upstream_keys"]
    assert keys[1] in upstream and keys[0] not in upstream
    assert manifest(runs / "toy/05_analysis")["params"]["seeds"] == [0, 1]
    one = pipeline.run_profile("toy", runs_root=str(runs), only="02_token_pruning,04_combination")
    assert all(s["status"] == "up to date" for s in one) and len(one) == 2
    shifted = pipeline.plan("toy", ["04_combination"], {"seed": 5}, runs, seeds=2)
    assert [r.run_dir.name for r in shifted] == ["seed_5", "seed_6"]
    with pytest.raises(UserError, match="--seeds must be an integer >= 1"):
        pipeline.plan("toy", ["04_combination"], {}, runs, seeds=0)
    with pytest.raises(UserError, match="set by the pipeline"):
        pipeline.plan("toy", ["05_analysis"], {"seeds": [3]}, runs)


FIGURES = '''
pathlib.Path(run_dir, "figures").mkdir()
pathlib.Path(run_dir, "figures", "table1.md").write_text(str(value))
'''


def test_figures_reach_the_repo_only_from_the_repos_own_runs(toy, tmp_path_factory):
    (toy / "notebooks/05_analysis.ipynb").write_text(
        json.dumps(notebook("value: int = 0\nfail: bool = False\nseeds: list[int] = [0]\n", FIGURES)))
    elsewhere = tmp_path_factory.mktemp("scratch")
    pipeline.run_profile("toy", only="05_analysis", runs_root=str(elsewhere), overrides={"value": 7})
    assert (elsewhere / "toy/05_analysis/figures/table1.md").read_text() == "7"
    assert not (toy / "figures").exists()
    pipeline.run_profile("toy", only="05_analysis", overrides={"value": 8})  # the default runs root: <repo>/runs
    assert (toy / "figures/toy/table1.md").read_text() == "8"
    with pytest.raises(UserError):
        pipeline.run_profile("toy", only="05_analysis", overrides={"value": 9, "fail": True})
    assert (toy / "figures/toy/table1.md").read_text() == "8"  # a failed 05 leaves the published figures alone
    pipeline.run_profile("toy", only="05_analysis", seeds=3, overrides={"value": 10})
    assert (toy / "figures/toy-3seeds/table1.md").read_text() == "10"
    assert (toy / "figures/toy/table1.md").read_text() == "8"


def test_kernel_runs_over_ipc_without_the_tcp_warning(toy, capfd):
    """The kernel's "running over TCP without encryption" warning (printed to the terminal by
    every TCP kernel) is gone: pipeline kernels use IPC sockets, and leave no socket file behind."""
    before = set(toy.iterdir())
    pipeline.run_profile("toy", only="00_data_cache", runs_root=str(toy / "runs"))
    err = capfd.readouterr().err
    assert "without encryption" not in err
    assert execution._ipc_kernel_manager()().transport == "ipc"
    assert {p.name for p in set(toy.iterdir()) - before} == {"runs"}


def test_concurrent_kernels_get_their_own_ipc_sockets():
    """jupyter_client's default IPC prefix is "kernel-ipc" in the working directory, so two runs
    started at once from one folder shared socket files and each kernel got the other's messages
    ("Invalid Signature", then "Kernel didn't respond"); each manager now has its own prefix."""
    manager = execution._ipc_kernel_manager()
    first, second = manager().ip, manager().ip
    assert first != second
    assert all(Path(ip).is_absolute() and Path(ip).parent.is_dir() for ip in (first, second))


def test_cli_prints_the_notebooks_own_error_line(toy, monkeypatch, capsys):
    """A UserError inside a notebook reaches the console as its own text (first line), a
    plain exception as `Name: message`; never papermill's empty `PapermillExecutionError: `.
    (In-process: test_cli_prints_one_error_line covers the real command line.)"""
    monkeypatch.chdir(toy)
    argv = ["run", "--profile", "toy", "--only", "00_data_cache"]
    assert cli(argv + ["-p", "user_error=no folder /data/x, set imagefolder_dir"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 00_data_cache failed: no folder /data/x, set imagefolder_dir (the partial")
    assert "PapermillExecutionError" not in err and "second line" not in last
    assert cli(argv + ["-p", "fail=true"]) == 2
    assert "error: 00_data_cache failed: RuntimeError: asked to fail (the partial" in capsys.readouterr().err


def test_a_folder_changed_outside_the_pipeline_is_not_up_to_date(toy, capsys):
    """A notebook run by hand that wrote into a pipeline run folder (what a lab run of main
    48741d8 did) leaves files its manifest does not know: the pipeline re-runs that run."""
    runs = toy / "runs"
    pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))
    run_dir = runs / "toy/00_data_cache"
    time.sleep(0.01)  # a rewrite gets a later mtime even on coarse clocks
    (run_dir / "metrics.json").write_text(json.dumps({"top1": 99.0, "value": 9}))
    (run_dir / "model.pt").write_text("weights from a lab run")
    again = pipeline.run_profile("toy", only="00_data_cache", runs_root=str(runs))
    assert again[0]["status"] == "ran"
    assert "re-running: metrics.json, model.pt changed since the pipeline wrote the folder" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["value"] == 2
    assert run_folders.changed_files(run_dir, manifest(run_dir)) == []


def test_a_notebook_outside_the_pipeline_writes_under_lab(toy):
    """Without an injected run_dir a run goes to <runs_root>/<profile>/lab/...; its upstream is
    the lab's own run when it finished one, else the pipeline's."""
    params = {"profile": "toy", "runs_root": str(toy / "runs"), "run_dir": "", "base_rate": 0.5}
    assert run_folders.own_run_dir(params, "02_token_pruning") == toy / "runs/toy/lab/02_token_pruning/base_rate_0.5"
    assert run_folders.upstream_run_dir(params, "00_data_cache", {}) == toy / "runs/toy/00_data_cache"
    lab = toy / "runs/toy/lab/00_data_cache"
    lab.mkdir(parents=True)
    (lab / "metrics.json").write_text("{}")
    assert run_folders.upstream_run_dir(params, "00_data_cache", {}) == lab
    injected = {**params, "run_dir": str(toy / "x")}
    assert run_folders.own_run_dir(injected, "02_token_pruning") == toy / "x"
    assert run_folders.upstream_run_dir(injected, "00_data_cache", {}) == toy / "runs/toy/00_data_cache"


def _span(run_dir: Path) -> tuple[float, float]:
    m = json.loads((run_dir / "metrics.json").read_text())
    return m["started"], m["ended"]


@pytest.mark.slow
def test_runs_go_side_by_side_where_their_threads_fit_the_cores(toy, monkeypatch):
    """Two 1-thread runs of the sweep overlap on a 2-core machine, each after the run they read;
    --jobs 1 runs them one after the other (as do runs whose threads fill the cores)."""
    monkeypatch.setattr(pipeline, "environment", lambda: {"cpu_cores": 2})
    runs = toy / "runs"
    pipeline.run_profile("toy", runs_root=str(runs), overrides={"sleep": 1.0, "threads": 1})
    first, second = (_span(runs / f"toy/02_token_pruning/base_rate_{r}") for r in (0.9, 0.5))
    cache = _span(runs / "toy/00_data_cache")
    assert first[0] < second[1] and second[0] < first[1]  # they overlapped
    assert cache[1] <= min(first[0], second[0])  # both read 00's run, so they started after it
    assert manifest(runs / "toy/02_token_pruning/base_rate_0.5")["side_by_side"] is True
    pipeline.run_profile("toy", only="02_token_pruning", runs_root=str(runs), jobs=1,
                         overrides={"sleep": 0.2, "value": 3, "threads": 1})
    first, second = (_span(runs / f"toy/02_token_pruning/base_rate_{r}") for r in (0.9, 0.5))
    assert first[1] <= second[0]  # one after the other, in plan order
    run = pipeline.plan("toy", ["02_token_pruning"], {"threads": 2}, runs)[0]
    assert pipeline._cores_used(run, 2) == 2 and pipeline._cores_used(run, 8) == 2
    run.params["num_processes"] = "auto"  # one process per GPU or core: the machine to itself
    assert pipeline._cores_used(run, 8) == 8


def test_side_by_side_a_failure_stops_new_runs_and_keeps_the_good_ones(toy, monkeypatch, capsys):
    monkeypatch.setattr(pipeline, "environment", lambda: {"cpu_cores": 2})
    runs = toy / "runs"
    pipeline.run_profile("toy", runs_root=str(runs))
    good = _files(runs / "toy/02_token_pruning/base_rate_0.9")
    with pytest.raises(UserError, match=r"base_rate_0\.[59] failed: RuntimeError: asked to fail .*is untouched"):
        pipeline.run_profile("toy", only="02_token_pruning", runs_root=str(runs), overrides={"fail": True, "threads": 1})
    assert _files(runs / "toy/02_token_pruning/base_rate_0.9") == good
    assert manifest(runs / "toy/02_token_pruning/base_rate_0.9.partial")["status"] == "failed"
    assert "asked to fail" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGINT"), reason="no SIGINT on this platform")
def test_ctrl_c_stops_every_run_under_way_and_keeps_the_good_ones(toy):
    runs = toy / "runs"
    pipeline.run_profile("toy", runs_root=str(runs))
    good = {r: _files(runs / f"toy/02_token_pruning/base_rate_{r}") for r in (0.9, 0.5)}
    proc = subprocess.Popen([sys.executable, "-m", "vitprune", "run", "--profile", "toy", "--only", "02_token_pruning",
                             "--runs-root", str(runs), "-p", "sleep=60", "-p", "threads=1", "--jobs", "2"], cwd=toy,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = [runs / f"toy/02_token_pruning/base_rate_{r}.partial/started" for r in (0.9, 0.5)]
    deadline = time.time() + 120
    while not all(p.exists() for p in started) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert all(p.exists() for p in started), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 130 and err.strip().splitlines()[-1].startswith("interrupted: `run` stopped")
    for r in (0.9, 0.5):
        assert _files(runs / f"toy/02_token_pruning/base_rate_{r}") == good[r]
        assert manifest(runs / f"toy/02_token_pruning/base_rate_{r}.partial")["status"] == "interrupted"


def test_named_points_run_beside_the_sweep_and_study_adds_its_own(toy):
    """sweep.yaml's `points` (a control) run at every seed in a folder of their name; study.yaml's
    only with --study; a lab run of the point writes to the lab twin of that folder."""
    seeded = "value: float = 0.5\nbase_rate: float = 0.7\nfail: bool = False\nseed: int = 0\ncontrol: bool = False\n"
    (toy / "notebooks/02_token_pruning.ipynb").write_text(json.dumps(notebook(seeded)))
    (toy / "params/toy/sweep.yaml").write_text("02_token_pruning: {base_rate: [0.9]}\n"
                                               "points:\n  02_token_pruning: {control: {control: true}}\n")
    (toy / "params/toy/study.yaml").write_text("points:\n  02_token_pruning: {slow: {base_rate: 0.2, value: 4}}\n")
    runs = toy / "runs"
    usual = pipeline.plan("toy", ["02_token_pruning"], {}, runs, seeds=2)
    assert [r.name for r in usual] == ["02_token_pruning/base_rate_0.9__seed_0", "02_token_pruning/base_rate_0.9__seed_1",
                                       "02_token_pruning/control__seed_0", "02_token_pruning/control__seed_1"]
    assert usual[3].params["control"] is True and usual[3].params["seed"] == 1
    study = pipeline.plan("toy", ["02_token_pruning"], {}, runs, study=True)
    assert [r.name for r in study][-1] == "02_token_pruning/slow__seed_0" and study[-1].params["value"] == 4
    pipeline.run_profile("toy", runs_root=str(runs), only="02_token_pruning", study=True, jobs=1,
                         overrides={"seed": 3})
    assert manifest(runs / "toy/02_token_pruning/slow__seed_3")["params"]["base_rate"] == 0.2
    lab = {"profile": "toy", "runs_root": str(runs), "run_dir": "", "seed": 0, "control": True, "base_rate": 0.9}
    assert run_folders.own_run_dir(lab, "02_token_pruning") == runs / "toy/lab/02_token_pruning/control__seed_0"
    with pytest.raises(UserError, match="-p control: the controls are runs of their own"):
        pipeline.plan("toy", ["02_token_pruning"], {"control": True}, runs)
    (toy / "params/toy/study.yaml").write_text("02_token_pruning: {base_rate: [0.3]}\n")
    with pytest.raises(UserError, match="holds only 'points'"):
        pipeline.plan("toy", ["02_token_pruning"], {}, runs, study=True)


def test_notebook_04_waits_only_for_the_two_runs_it_continues(tmp_path):
    """The pipeline starts 04 once 02's run at its base_rate and 03's at its block_mac_ratio (or
    their controls) are done, not after the whole sweep; the notebook reads the same two folders."""
    runs = pipeline.plan("smoke", pipeline.available_notebooks(), {}, tmp_path, study=True)
    depends = pipeline._keys_and_dependencies(runs, tmp_path, "smoke", 1, True)
    assert depends["04_combination/seed_0"] == ["00_data_cache", "01_deit_baseline",
                                                "02_token_pruning/base_rate_0.7__seed_0", "03_block_pruning/seed_0"]
    assert depends["04_combination/control__seed_0"][2:] == ["02_token_pruning/control__seed_0",
                                                             "03_block_pruning/control__seed_0"]
    assert len(depends["05_analysis"]) == len(runs) - 1


def test_runs_start_by_the_longest_chain_waiting_on_them():
    """The side-by-side scheduler starts first what the most runs wait on in a row: 04's two inputs
    before the rest of the sweep, so 04 runs beside the sweep instead of after it."""
    depends = {"00": [], "01": ["00"], "02/a": ["00", "01"], "03/a": ["01"], "02/b": ["01"],
               "04": ["02/a", "03/a"], "05": ["02/a", "02/b", "03/a", "04"]}
    chain = pipeline._chain_lengths(depends)
    assert chain == {"00": 5, "01": 4, "02/a": 3, "03/a": 3, "02/b": 2, "04": 2, "05": 1}


def test_a_running_notebook_shows_its_cells_on_a_terminal_only(tmp_path):
    """papermill's cell bar carries the run's name on a terminal; a log gets the pipeline's lines only."""
    import io

    from vitprune.study import execution

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    bar = execution.cell_progress("02_token_pruning/seed_0", stream=terminal)
    assert bar["desc"] == "[02_token_pruning/seed_0] cells" and bar["file"] is terminal
    assert execution.cell_progress("02_token_pruning/seed_0", stream=io.StringIO()) is False
