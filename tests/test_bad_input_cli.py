"""Bad input on the command line: one `error: ...` line naming what is wrong and the fix,
exit status 2, nothing lost (each case was a confusing message or a silent pass before)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import tinydata
from vitprune import models
from vitprune.__main__ import main as cli


def _one_error(capsys) -> str:
    """The error line of a failed command: exactly one, and the last (progress bars may precede it)."""
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line.lower()]
    assert len(errors) == 1 and err[-1] == errors[0] and errors[0].startswith("error: "), err
    return errors[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory holding model.pt, as notebooks 01-04 write it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("runs") / "base_rate_0.7__seed_0"
    models.save_checkpoint(path / "model.pt", models.create_model("vit_fmnist", depth=3))
    return path


# ------------------------------------------------------------------ 1. run directories


def test_measure_and_bench_take_a_run_directory(run_dir, capsys):
    assert cli(["measure", str(run_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["checkpoint"] == str(run_dir / "model.pt")
    argv = ["bench", str(run_dir), "--keep-heads", "0.5", "--keep-mlp", "0.5", "--batch-size", "1",
            "--warmup", "0", "--repeats", "1", "--json"]
    assert cli(argv) == 0
    assert json.loads(capsys.readouterr().out)["checkpoint"] == str(run_dir / "model.pt")


def test_measure_folder_without_model_pt_lists_the_checkpoints_below_it(run_dir, capsys):
    root = run_dir.parent
    assert cli(["measure", str(root)]) == 2
    line = _one_error(capsys)
    assert "has no model.pt" in line and "base_rate_0.7__seed_0/model.pt" in line


# ------------------------------------------------------------------ 2, 3, 4, 5. data check / export


def test_data_check_of_a_file_says_it_is_a_file(tmp_path, capsys):
    path = tmp_path / "labels.txt"
    path.write_text("cat\n")
    assert cli(["data", "check", str(path)]) == 2
    line = _one_error(capsys)
    assert str(path) in line and "is a file" in line and "does not exist" not in line


def test_data_export_of_an_imagefolder_names_the_cache_command(tmp_path, capsys):
    folder = tinydata.write_imagefolder(tmp_path / "f", ["cat", "dog"], per_class=1)
    assert cli(["data", "export", str(folder), str(tmp_path / "out")]) == 2
    line = _one_error(capsys)
    assert "ImageFolder" in line and "incomplete" not in line
    assert f"data cache OUT --source imagefolder --imagefolder {folder}" in line
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory, tiny_idx_dir) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    assert cli(["data", "cache", str(out), "--source", "idx", "--idx-dir", str(tiny_idx_dir),
                "--train-per-class", "1", "--eval-per-class", "1", "--json"]) == 0
    return out


def test_data_export_checks_every_split_folder_before_writing(tiny_cache, tmp_path, capsys):
    out = tmp_path / "x"
    (out / "test").mkdir(parents=True)
    (out / "test" / "keep.txt").write_text("not mine")
    assert cli(["data", "export", str(tiny_cache), str(out)]) == 2
    line = _one_error(capsys)
    assert str(out / "test") in line and "train" not in line.split("already")[0]
    assert "remove" in line and "another output folder" in line
    assert sorted(p.name for p in out.iterdir()) == ["test"]  # train/ not written
    assert (out / "test" / "keep.txt").read_text() == "not mine"


def test_data_export_into_a_file_is_one_line(tiny_cache, tmp_path, capsys):
    out = tmp_path / "afile"
    out.write_text("")
    assert cli(["data", "export", str(tiny_cache), str(out)]) == 2
    assert _one_error(capsys) == f"error: export OUT {out} is a file; give a folder to write the ImageFolder into"


def test_data_check_empty_class_folder_is_an_error(tmp_path, capsys):
    folder = tinydata.write_imagefolder(tmp_path / "f", ["cat"], per_class=2)
    (folder / "dog").mkdir()
    assert cli(["data", "check", str(folder)]) == 2
    line = _one_error(capsys)
    assert "'dog'" in line and "'cat'" not in line and "no images" in line


# ------------------------------------------------------------------ 6. decompression bombs


def _folder_with_a_big_image(root: Path) -> Path:
    tinydata.write_imagefolder(root, ["0", "1"], per_class=2)
    big = root / "1" / "big.png"
    Image.new("L", (40, 40), 128).save(big)  # 1600 px: past a 1000 px limit, short of PIL's 2x error
    return big


def test_decompression_bomb_is_a_bad_image(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 28x28 images (784 px) stay below it
    big = _folder_with_a_big_image(tmp_path / "f")
    argv = ["data", "cache", str(tmp_path / "c"), "--source", "imagefolder", "--imagefolder", str(tmp_path / "f")]
    assert cli(argv) == 2
    line = _one_error(capsys)
    assert str(big) in line and "--skip-bad" in line
    assert not (tmp_path / "c").exists()
    assert cli([*argv, "--skip-bad", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped_bad"] == {"train": 1} and report["counts"]["train"] == {"0": 2, "1": 2}


# ------------------------------------------------------------------ 7. official weights


@pytest.fixture(scope="module")
def official_weights(tmp_path_factory) -> Path:
    """vit_fmnist weights in the official DeiT layout {"model": state_dict}."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "vit_fmnist-official.pth"
    torch.save({"model": models.create_model("vit_fmnist").state_dict()}, path)
    return path


def test_official_weights_as_model_name_the_weights_option(official_weights, capsys):
    assert cli(["measure", str(official_weights)]) == 2
    line = _one_error(capsys)
    assert f"measure deit_base_patch16_224 --weights {official_weights}" in line


def test_weights_option_loads_official_weights(official_weights, run_dir, capsys):
    assert cli(["measure", "vit_fmnist", "--weights", str(official_weights), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["weights"] == str(official_weights) and info["checkpoint"] is None
    assert cli(["measure", "vit_fmnist", "--weights", str(official_weights)]) == 0
    assert "random init" not in capsys.readouterr().out
    # the file really is loaded: a model it does not fit is refused
    assert cli(["measure", "vit_fmnist", "--weights", str(official_weights), "--num-classes", "5"]) == 2
    assert "does not fit" in _one_error(capsys)
    assert cli(["measure", "vit_fmnist", "--weights", str(official_weights.parent / "nope.pth")]) == 2
    assert "weights file not found" in _one_error(capsys)
    assert cli(["measure", str(run_dir), "--weights", str(official_weights)]) == 2
    assert "--weights" in _one_error(capsys)
