"""Params / MACs / FLOPs counting and the measure + bench command lines (vitprune.measure)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vitprune import measure
from vitprune.__main__ import main as cli
from vitprune.errors import UserError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deit_tiny():
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_patch16_224", pretrained=False)


def test_linear_layers_exact_macs():
    # tokens x in x out per Linear: 5*8*16 + 5*16*4 = 960 MACs; GELU is not counted
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    res = measure.count(model, input_shape=(1, 5, 8))
    assert res["macs"] == 960
    assert res["flops"] == 1920
    assert res["params"] == 8 * 16 + 16 + 16 * 4 + 4
    assert "aten::gelu" in res["uncounted_ops"]


class _SDPA(nn.Module):
    """q: 7 queries, k/v: 5 keys, 2 heads, D=4, Dv=3 -> 2*7*5*4 + 2*7*5*3 = 490 MACs."""

    def forward(self, x):
        q = x[..., :4]
        k = x[:, :, :5, :4]
        v = x[:, :, :5, 4:7]
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_handle_counts_both_matmuls():
    res = measure.count(_SDPA(), input_shape=(1, 2, 7, 8))
    assert res["macs"] == 2 * 7 * 5 * 4 + 2 * 7 * 5 * 3
    assert res["macs_by_operator"] == {"scaled_dot_product_attention": 490}


def test_fused_attention_counts_like_unfused(deit_tiny):
    fused = measure.count(deit_tiny)
    assert all(blk.attn.fused_attn for blk in deit_tiny.blocks)  # left on
    for blk in deit_tiny.blocks:
        blk.attn.fused_attn = False
    try:
        unfused = measure.count(deit_tiny)
    finally:
        for blk in deit_tiny.blocks:
            blk.attn.fused_attn = True
    assert fused["macs"] == unfused["macs"]
    # the attention matmuls: 2 * depth * tokens^2 * embed_dim
    assert fused["macs_by_operator"]["scaled_dot_product_attention"] == 2 * 12 * 197 ** 2 * 192
    assert fused["input_shape"] == [1, 3, 224, 224]


def test_small_vit_hand_computed():
    # 28x28x1 image, patch 7 -> 16 patches + CLS = 17 tokens, width 32, 2 heads, MLP 128
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=28, patch_size=7, in_chans=1, num_classes=10,
                              embed_dim=32, depth=2, num_heads=2, mlp_ratio=4.0)
    n, d, h, hidden = 17, 32, 2, 128
    patch = 16 * d * (1 * 7 * 7)
    layer_norm = n * d * 5  # fvcore: 5 per element with affine
    block = (n * d * 3 * d            # qkv
             + 2 * h * n * n * (d // h)  # QK^T and AV inside fused SDPA
             + n * d * d              # proj
             + 2 * n * d * hidden     # fc1, fc2
             + 2 * layer_norm)
    expected = patch + 2 * block + layer_norm + d * 10
    res = measure.count(model)  # size and channels read from the model, not timm's cfg
    assert res["input_shape"] == [1, 1, 28, 28]
    assert res["macs"] == expected
    assert res["params"] == sum(p.numel() for p in model.parameters())


def test_count_restores_mode_and_per_module(deit_tiny):
    deit_tiny.train()
    res = measure.count(deit_tiny, per_module=True)
    assert deit_tiny.training
    deit_tiny.eval()
    assert res["macs_by_module"][""] == res["macs"]
    assert sum(res["macs_by_module"][f"blocks.{i}"] for i in range(12)) < res["macs"]


class _TopKGather(nn.Module):
    """Scores 16 tokens, keeps the top 6 by gather, then a 32x32 Linear on the kept ones."""

    def __init__(self):
        super().__init__()
        self.score = nn.Linear(32, 1)
        self.proj = nn.Linear(32, 32)

    def forward(self, x):
        idx = self.score(x).squeeze(-1).topk(6, dim=1).indices
        kept = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        return self.proj(kept)


def test_dynamic_topk_gather_counts_kept_tokens():
    res = measure.count(_TopKGather(), input_shape=(1, 16, 32))
    assert res["macs"] == 16 * 32 * 1 + 6 * 32 * 32


def test_count_rejects_batch_above_one():
    with pytest.raises(ValueError, match="batch must be 1"):
        measure.count(nn.Linear(3, 3), input_shape=(2, 3))


def test_deit_base_known_values():
    model = timm.create_model("deit_base_patch16_224", pretrained=False)
    res = measure.count(model)
    assert res["params"] == 86_567_656  # DeiT paper: 86.6 M
    assert res["macs"] == pytest.approx(17.58e9, rel=0.005)  # fvcore + attention matmuls
    assert res["flops"] == 2 * res["macs"]


def test_efficientformer_l1_counts_from_the_command_line(capsys):
    """A timm model with no ViT blocks (the one Table 1 cites) counts without any method flag."""
    assert cli(["measure", "efficientformer_l1", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    # EfficientFormer paper (Li et al. 2022): 12.3 M params, 1.3 GMACs
    assert res["params"] == pytest.approx(12.3e6, rel=0.01)
    assert res["macs"] == pytest.approx(1.30e9, rel=0.01)
    assert res["flops"] == 2 * res["macs"] and "block_masks" not in res


def test_cli_json_subprocess():
    proc = subprocess.run(
        [sys.executable, "-m", "vitprune", "measure", "deit_tiny_patch16_224", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    info = json.loads(lines[0])
    assert info["model"] == "deit_tiny_patch16_224"
    assert info["img_size"] == 224
    assert info["params"] == 5_717_416
    assert info["flops"] == 2 * info["macs"]
    assert info["macs"] == pytest.approx(1.258e9, rel=0.002)


def test_cli_human_table_labels(capsys):
    assert cli(["measure", "deit_tiny_patch16_224", "--img-size", "112", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "multiply-accumulates" in out and "= 2 x MACs" in out
    assert "1 x 3 x 112 x 112" in out


def test_cli_unknown_model_exit_2(capsys):
    assert cli(["measure", "deit_bse_patch16_224", "--json"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown model")
    assert "deit_base_patch16_224" in err[0] and "timm.list_models" in err[0]
    assert captured.out == ""


@pytest.mark.parametrize("argv, message", [
    (["--keep-heads", "1.5"], "--keep-heads"),
    (["--schedule", "linear"], "--base-rate"),
    (["--base-rate", "0.7", "--locations", "3,x"], "--locations"),
    (["--base-rate", "0"], "--base-rate"),
])
def test_cli_bad_variant_options(capsys, argv, message):
    assert cli(["measure", "deit_tiny_patch16_224", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_missing_checkpoint(capsys, tmp_path):
    assert cli(["measure", str(tmp_path / "model.pt")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_benchmark_function_keys():
    torch.manual_seed(0)
    big, small = nn.Linear(64, 64), nn.Linear(64, 8)
    threads = torch.get_num_threads()
    res = measure.benchmark(big.train(), small, (4, 64), warmup=1, repeats=3, threads=1,
                            baseline_macs=64 * 64, variant_macs=64 * 8)
    assert torch.get_num_threads() == threads and big.training
    assert len(res["baseline_ms_runs"]) == len(res["variant_ms_runs"]) == 3
    # the median of the per-round ratios, not the ratio of the medians
    ratios = sorted(b / v for b, v in zip(res["baseline_ms_runs"], res["variant_ms_runs"]))
    assert res["speedup"] == pytest.approx(ratios[1]) == pytest.approx(measure.paired_speedup(
        res["baseline_ms_runs"], res["variant_ms_runs"]))
    assert res["mac_ratio"] == 8.0
    assert res["speedup_over_mac_ratio"] == pytest.approx(res["speedup"] / 8.0)
    assert res["batch_size"] == 4 and res["threads"] == 1 and res["repeats"] == 3


def test_interleaved_alternates_order_and_fills_short_rounds():
    log = []

    def runner(name, seconds):
        def run():
            log.append(name)
            time.sleep(seconds)
        return run

    times, calls = measure.interleaved({"a": runner("a", 0.001), "b": runner("b", 0.0005)},
                                       warmup=1, repeats=3, min_round_ms=8)
    # ~1 ms per call: a round of 8 ms needs several calls, the same number for both.
    assert 3 <= calls <= 8
    timed = log[4:]  # the warm-up: one untimed and one calibrating call of each
    # each turn: one untimed call (the model starts warm), then `calls` timed ones
    turn = calls + 1
    # rounds: a b | b a | (rotated) b a | ...
    assert timed == ["a"] * turn + ["b"] * turn + ["b"] * turn + ["a"] * turn + ["b"] * turn + ["a"] * turn
    assert len(times["a"]) == len(times["b"]) == 3
    assert all(t >= 1.0 for t in times["a"]) and all(t >= 0.5 for t in times["b"])  # ms per call
    # without a warm-up there is nothing to calibrate from: one call per round
    assert measure.interleaved({"a": lambda: None}, warmup=0, repeats=2)[1] == 1
    with pytest.raises(UserError, match="--repeats"):
        measure.interleaved({"a": lambda: None}, warmup=0, repeats=0)


class _DtypeProbe(nn.Linear):
    """A linear layer that records the dtype its output was computed in."""

    def forward(self, x):
        out = super().forward(x)
        self.seen = out.dtype
        return out


def test_benchmark_times_both_models_at_one_precision():
    base, variant = _DtypeProbe(16, 16), _DtypeProbe(16, 4)
    res = measure.benchmark(base, variant, (2, 16), warmup=0, repeats=1)
    assert res["precision"] == "fp32" and base.seen == variant.seen == torch.float32
    res = measure.benchmark(base, variant, (2, 16), warmup=0, repeats=1, precision="bf16")
    assert res["precision"] == "bf16" and base.seen == variant.seen == torch.bfloat16
    with pytest.raises(UserError, match="precision"):
        measure.benchmark(base, variant, (2, 16), precision="fp16")


def test_benchmark_refuses_a_model_left_wrapped_in_autocast():
    """What a one-process bf16 Accelerator.prepare leaves on the caller's model."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    base, variant = nn.Linear(16, 16), nn.Linear(16, 4)
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        Accelerator(cpu=True, mixed_precision="bf16").prepare(variant)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    with pytest.raises(UserError, match="variant model's forward is wrapped"):
        measure.benchmark(base, variant, (2, 16), warmup=0, repeats=1)


def test_bench_cli_needs_a_variant(capsys):
    assert cli(["bench", "deit_tiny_patch16_224", "--json"]) == 2
    assert "nothing to compare" in capsys.readouterr().err


def test_cli_token_pruning_variant(capsys):
    small = ["--img-size", "112", "--json"]  # 49 patches + CLS keeps the test fast
    assert cli(["measure", "deit_tiny_patch16_224", *small]) == 0
    base = json.loads(capsys.readouterr().out)
    assert cli(["measure", "deit_tiny_patch16_224", "--base-rate", "0.7", *small]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokens_per_block"][:3] == [50, 50, 50]
    assert info["tokens_per_block"][-1] < info["tokens_per_block"][3] < 50
    assert info["macs"] < 0.7 * base["macs"]
    assert info["params"] > base["params"]  # score predictors are counted


def test_bench_cli_token_variant_json(capsys):
    argv = ["bench", "deit_tiny_patch16_224", "--img-size", "112", "--base-rate", "0.5",
            "--batch-size", "1",
            "--warmup", "0", "--repeats", "1", "--threads", "1", "--json"]
    assert cli(argv) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("baseline_ms", "variant_ms", "speedup", "mac_ratio", "speedup_over_mac_ratio",
                "threads", "batch_size", "tokens_per_block"):
        assert key in res
    assert res["mac_ratio"] > 1.5 and res["batch_size"] == 1


def test_cli_checkpoint_path(capsys, tmp_path):
    from vitprune import models
    from vitprune.methods import dynamicvit

    model = models.create_model("deit_tiny_patch16_224", img_size=112, num_classes=10)
    dynamicvit.attach(model, base_rate=0.7)
    path = tmp_path / "model.pt"
    models.save_checkpoint(path, model)
    assert cli(["measure", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected = measure.count(model)
    assert (info["params"], info["macs"]) == (expected["params"], expected["macs"])
    assert info["checkpoint"] == str(path) and info["img_size"] == 112
    assert info["tokens_per_block"] == dynamicvit.tokens_per_block(model)
    # bench compares the checkpoint against its unpruned base model
    argv = ["bench", str(path), "--batch-size", "1", "--warmup", "0", "--repeats", "1", "--json"]
    assert cli(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["variant_macs"] == expected["macs"] and res["mac_ratio"] > 1.3


def test_cli_block_then_token_variant(capsys):
    argv = ["measure", "deit_tiny_patch16_224", "--keep-heads", "0.5", "--keep-mlp", "0.5",
            "--base-rate", "0.7", "--img-size", "112", "--json"]
    assert cli(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["block_spec"]) == 12
    assert all(b["heads"] < 3 and b["mlp"] < 768 for b in info["block_spec"])
    assert info["tokens_per_block"][3] < 50
    assert info["keep_heads"] == 0.5 and info["keep_mlp"] == 0.5
