"""benchmarks/gpu_throughput.py on CPU with a tiny DeiT: every row measured, positive, and
the block-pruned model (half the heads and MLP channels) is the cheaper one to evaluate."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import gpu_throughput  # noqa: E402


def test_throughput_rows_on_cpu():
    out = gpu_throughput.run("deit_tiny_patch16_224", img_size=32, batch_size=4, precision="no",
                             warmup=1, steps=1, device="cpu")
    assert out["device"] == "cpu" and out["batch_size"] == 4
    assert set(out["train_img_per_s"]) == {"dynamicvit", "block_pruned"}
    assert set(out["eval_img_per_s"]) == {"baseline", "dynamicvit", "block_pruned"}
    assert all(v > 0 for v in [*out["train_img_per_s"].values(), *out["eval_img_per_s"].values()])
    assert out["eval_speedup"]["block_pruned"] == pytest.approx(
        out["eval_img_per_s"]["block_pruned"] / out["eval_img_per_s"]["baseline"])


def test_bf16_autocast_runs_on_cpu():
    out = gpu_throughput.run("deit_tiny_patch16_224", img_size=32, batch_size=2, precision="bf16",
                             warmup=0, steps=1, device="cpu")
    assert out["precision"] == "bf16" and out["eval_img_per_s"]["baseline"] > 0
