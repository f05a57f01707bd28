"""The released baseline: `release` copies a finished training run with its sha256 and record;
notebook 01 evaluates the file (hash checked before any kernel starts, recorded top-1
reproduced); a changed or missing file is one error line naming `make baseline`."""

import json
import shutil

import pytest

from vitprune.__main__ import main as cli
from vitprune.errors import UserError
from vitprune.study import config, pipeline, release, results


@pytest.fixture
def released(smoke_runs, tmp_path):
    """The smoke pipeline's trained baseline, released into tmp_path/releases/smoke/."""
    target = tmp_path / "releases" / "smoke" / release.CHECKPOINT_FILE
    assert cli(["release", str(smoke_runs / "01_deit_baseline"), "--profile", "smoke", "--to", str(target)]) == 0
    return target


def test_release_copies_the_run_with_its_hash_and_record(smoke_runs, released):
    record = release.check(released)
    run = results.read_metrics(smoke_runs / "01_deit_baseline")
    assert record["sha256"] == release.sha256(smoke_runs / "01_deit_baseline" / "model.pt")
    assert record["top1"] == run["top1"] and record["eval_samples"] == run["eval_samples"]
    assert record["budget"] == run["budget"] and record["metrics"]["history"] == run["history"]  # the training curve
    assert record["manifest"]["status"] == "ok" and record["command"] == "python -m vitprune run --profile smoke --only 01_deit_baseline"


def test_a_release_is_replaced_only_when_asked(smoke_runs, released, capsys):
    before = released.with_name(release.RECORD_FILE).read_text()
    argv = ["release", str(smoke_runs / "01_deit_baseline"), "--to", str(released)]
    assert cli(argv) == 2
    assert "already released; pass --replace" in capsys.readouterr().err
    assert released.with_name(release.RECORD_FILE).read_text() == before
    assert cli(argv + ["--replace"]) == 0


def test_only_a_finished_training_run_is_released(smoke_runs, tmp_path, capsys):
    assert cli(["release", str(smoke_runs / "02_token_pruning"), "--to", str(tmp_path / "r/model.pt")]) == 2
    assert "is not a finished pipeline run" in capsys.readouterr().err
    assert cli(["release", str(smoke_runs / "00_data_cache"), "--to", str(tmp_path / "r/model.pt")]) == 2
    assert "is a run of 00_data_cache, not of 01_deit_baseline" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("damage, fragment", [
    ("changed", "is not the released file: its sha256 is"),
    ("missing", "is missing: it is the released baseline"),
])
def test_a_changed_or_missing_release_is_one_line_naming_make_baseline(released, damage, fragment):
    if damage == "changed":
        released.write_bytes(released.read_bytes() + b"\0")
    else:
        released.unlink()
    with pytest.raises(UserError) as err:
        release.check(released)
    message = str(err.value)
    assert fragment in message and "make baseline" in message and "\n" not in message


def test_the_pipeline_checks_the_release_before_any_kernel_starts(released, smoke_runs, tmp_path, capsys):
    released.write_bytes(released.read_bytes()[:-1])
    runs = tmp_path / "runs"
    argv = ["run", "--profile", "smoke", "--only", "01_deit_baseline", "--runs-root", str(runs),
            "-p", "train=false", "-p", f"checkpoint={released}"]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "parameter 'checkpoint'" in err and "make baseline" in err
    assert not runs.exists()


@pytest.mark.slow
def test_notebook_01_evaluates_the_release_and_reproduces_its_top1(released, smoke_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(smoke_runs / "00_data_cache", runs / "smoke" / "00_data_cache")  # the same tiny data
    pipeline.run_profile("smoke", only="01_deit_baseline", overrides={"train": False, "checkpoint": str(released)},
                         runs_root=str(runs))
    m = results.read_metrics(runs / "smoke" / "01_deit_baseline")
    record = release.check(released)
    assert m["trained"] is False and m["history"] == [] and m["release"]["sha256"] == record["sha256"]
    assert abs(m["top1"] - record["top1"]) <= release.TOP1_TOLERANCE
    assert m["budget"] == record["budget"]  # Table 1 states how the released baseline was trained


def test_a_top1_the_release_does_not_reproduce_is_one_line(released):
    record = release.check(released)
    assert release.check_top1(record, record["top1"] + release.TOP1_TOLERANCE / 2, record["eval_samples"]) > 0
    with pytest.raises(UserError, match=r"scored .* points from the .* its record holds \(tolerance 0.1 points\)"):
        release.check_top1(record, record["top1"] - 5, record["eval_samples"])
    with pytest.raises(UserError, match="evaluate the released baseline on the whole split"):
        release.check_top1(record, record["top1"], record["eval_samples"] - 1)


def test_a_new_release_reruns_what_starts_from_it(released):
    """The path of the released file stays the same; its sha256 is part of the run key."""
    params = {"checkpoint": str(released)}
    assert config.released_inputs(params) == {"checkpoint": release.sha256(released)}
    record = release.record_path(released)
    record.write_text(json.dumps({**json.loads(record.read_text()), "sha256": "0" * 64}))
    assert config.released_inputs(params) == {"checkpoint": "0" * 64}


def test_the_committed_release_loads_from_any_working_folder(monkeypatch):
    """The fmnist profile's released baseline, as notebook 01 finds it: relative to the repository
    (the pipeline's kernels run there, a JupyterLab kernel in notebooks/), its sha256 as recorded."""
    value = config.load_yaml(config.profile_dir("fmnist") / "01_deit_baseline.yaml")["checkpoint"]
    monkeypatch.chdir(config.project_root() / "notebooks")
    record = release.check(config.resolve_path(value))
    assert record["top1"] >= 92.0 and record["eval_samples"] == 10000 and record["metrics"]["trained"]
    assert config.resolve_path(value).stat().st_size <= 2.5e6
