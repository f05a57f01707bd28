"""onnxruntime latency comparison: structure and MAC ratio (no wall time is asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from vitprune import measure
from vitprune.errors import UserError
from vitprune.deploy import runtime_bench
from vitprune.methods import block_pruning
from vitprune.models import create_model


def _pair():
    torch.manual_seed(0)
    base = create_model("vit_fmnist", depth=2).eval()
    variant = block_pruning.prune_to(create_model("vit_fmnist", depth=2).eval(), 0.5, 0.5)
    return base, variant


def test_compare_rows_for_each_runtime_precision_and_batch(tmp_path):
    base, variant = _pair()
    res = runtime_bench.compare(base, variant, batch_sizes=(1, 3), precisions=("fp32", "int8"), warmup=0, repeats=1,
                                threads=1, workdir=tmp_path)
    json.dumps(res)  # a JSON-able dict
    ratio = measure.count(base)["macs"] / measure.count(variant)["macs"]
    assert res["mac_ratio"] == pytest.approx(ratio) and ratio > 1.1  # the conv stem is not pruned
    assert res["variant_kind"] == "block" and res["baseline_kind"] == "baseline"
    keys = {(r["runtime"], r["precision"], r["batch_size"]) for r in res["rows"]}
    assert keys == {(rt, p, b) for rt, p in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"))
                    for b in (1, 3)}
    for row in res["rows"]:
        assert len(row["baseline_ms_runs"]) == len(row["variant_ms_runs"]) == 1
        assert row["speedup"] == pytest.approx(row["baseline_ms"] / row["variant_ms"])
        assert row["speedup_over_mac_ratio"] == pytest.approx(row["speedup"] / ratio)
        assert row["threads"] == 1
    assert res["onnx_check"]["variant"]["ok"] and res["onnx_check"]["baseline"]["ok"]
    assert (tmp_path / "variant.int8.onnx").is_file()
    assert "speedup/MAC" in runtime_bench.format_rows(res)


def test_compare_rejects_bad_options():
    base, variant = _pair()
    with pytest.raises(UserError, match="runtime"):
        runtime_bench.compare(base, variant, runtimes=("tvm",))
    with pytest.raises(UserError, match="int8"):
        runtime_bench.compare(base, variant, runtimes=("torch",), precisions=("int8",))
    with pytest.raises(UserError, match="precision"):
        runtime_bench.compare(base, variant, precisions=("fp16",))
    with pytest.raises(UserError, match="batch"):
        runtime_bench.compare(base, variant, batch_sizes=(0,))
