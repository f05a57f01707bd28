"""The export command and bench's onnxruntime runtime, called as a user calls them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from vitprune import models
from vitprune.cli import main as cli
from vitprune.methods import dynamicvit

from test_export import _spread

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def token_run_dir(tmp_path_factory):
    """A run directory holding a DynamicViT model.pt, as notebook 02 writes it."""
    torch.manual_seed(0)
    model = _spread(dynamicvit.attach(_spread(models.create_model("vit_fmnist", depth=3)), 0.7,
                                         locations=(1, 2)))
    run_dir = tmp_path_factory.mktemp("02_token_pruning")
    models.save_checkpoint(run_dir / "model.pt", model)
    return run_dir


def test_export_run_dir_subprocess(token_run_dir, tmp_path):
    out = tmp_path / "deploy" / "model.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "vitprune", "export", str(token_run_dir), str(out), "--int8",
                           "--json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kind"] == "dynamicvit" and out.is_file() and info["path"] == str(out)
    assert info["check"]["ok"] and info["check"]["max_abs_diff"] < 1e-4 * max(1, info["check"]["max_abs_logit"])
    assert set(info["check"]["by_batch"]) == {"1", "4"}
    assert (tmp_path / "deploy" / "model.int8.onnx").is_file()


def test_export_checkpoint_with_variant_flags_and_errors(token_run_dir, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert cli(["export", str(token_run_dir / "model.pt"), str(out), "--keep-heads", "0.5", "--keep-mlp", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "block+dynamicvit" in text and "-> ok" in text and out.is_file()
    empty = tmp_path / "empty_run"
    empty.mkdir()
    assert cli(["export", str(empty), str(out)]) == 2
    assert "has no model.pt" in capsys.readouterr().err


VIT_FMNIST_MACS = 30_280_064  # measure vit_fmnist (models.vit_fmnist docstring: 30.3 M)


def test_measure_merging_and_training_free_flags(capsys):
    assert cli(["measure", "vit_fmnist", "--merge-r", "3", "--json"]) == 0
    merged = json.loads(capsys.readouterr().out)
    assert merged["tokens_per_block"][:3] == [50, 47, 44] and merged["macs"] < 0.8 * VIT_FMNIST_MACS
    assert merged["merging"]["r"] == [3] * 12
    assert cli(["measure", "vit_fmnist", "--base-rate", "0.7", "--training-free", "--json"]) == 0
    free = json.loads(capsys.readouterr().out)
    assert "training_free" in free and free["macs"] < 0.8 * VIT_FMNIST_MACS
    assert cli(["measure", "vit_fmnist", "--base-rate", "0.7", "--merge-r", "3"]) == 2
    assert "one token method at a time" in capsys.readouterr().err


def test_bench_onnxruntime_json(token_run_dir, capsys):
    argv = ["bench", str(token_run_dir / "model.pt"), "--batch-size", "2", "--warmup", "0", "--repeats", "1",
            "--threads", "1", "--json"]
    assert cli(argv + ["--runtime", "onnxruntime", "--int8"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["runtime"] == "onnxruntime" and res["precision"] == "int8" and res["batch_size"] == 2
    assert res["variant_kind"] == "dynamicvit" and res["tokens_per_block"] == [50, 35, 25]
    assert res["mac_ratio"] > 1.1 and res["speedup"] == pytest.approx(res["baseline_ms"] / res["variant_ms"])
    assert res["onnx_check"]["variant"]["ok"]
    assert cli(argv + ["--runtime", "torch", "--int8"]) == 2
    assert "--int8" in capsys.readouterr().err


def test_export_verify_on_runs_every_test_image_through_both_runtimes(smoke_runs, tmp_path, capsys):
    """`--verify-on CACHE`: the cache's whole test split through PyTorch and onnxruntime, as one
    JSON object; PyTorch's top-1 is the one notebook 02 measured on the same images."""
    from conftest import smoke_run
    from vitprune.study import results

    run = smoke_run(smoke_runs, "02_token_pruning", base_rate=0.7)
    cache = smoke_runs / "00_data_cache" / "dataset"
    assert cli(["export", str(run), str(tmp_path / "dyvit.onnx"), "--verify-on", str(cache), "--int8", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    # the token choices of both runtimes, ranking by ranking (3 DynamicViT stages)
    assert info["selections"] == 3 and 0 <= info["differing_selections"] <= info["images"]
    assert info["min_cut_gap"] >= 0 and 0 <= info["max_score_diff"] < 1e-3
    assert 0 <= info["images_below_score_diff"] <= info["images"]
    assert 0 <= info["int8_top1"] <= 100 and (tmp_path / "dyvit.int8.onnx").is_file()
    metrics = results.read_metrics(run)
    assert info["images"] == metrics["eval_samples"] and info["eval_split"] == "test"
    assert info["torch_top1"] == pytest.approx(metrics["top1"], abs=1e-6)
    assert abs(info["onnxruntime_top1"] - info["torch_top1"]) <= 100.0 * info["differing_predictions"] / info["images"]
    assert 0 <= info["max_abs_logit_diff"] < 1e-3
    # a class-balanced subset, and a bad count is one error line
    assert cli(["export", str(run), str(tmp_path / "dyvit2.onnx"), "--verify-on", str(cache), "--per-class", "1",
                "--json"]) == 0
    classes = results.read_metrics(smoke_runs / "00_data_cache")["class_names"]
    assert json.loads(capsys.readouterr().out)["images"] == len(classes)
    assert cli(["export", str(run), str(tmp_path / "dyvit3.onnx"), "--verify-on", str(cache), "--per-class", "-1"]) == 2
    assert "--per-class must be >= 0" in capsys.readouterr().err
