"""vitprune's public API, for a timm VisionTransformer of your own (also as `vitprune.<name>`).

    model = timm.create_model("deit_small_patch16_224", pretrained=True).eval()
    pruned = vitprune.apply(copy.deepcopy(model), "dynamicvit", base_rate=0.7)
    vitprune.count(pruned)["macs"]; vitprune.benchmark(model, pruned); vitprune.export_onnx(pruned, "p.onnx")

Units: MACs are multiply-accumulates per image at batch 1 (FLOPs = 2 x MACs), latencies are
milliseconds per batch, tokens include CLS.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from vitprune.deploy import export
from vitprune.measure import counts, latency
from vitprune.methods import registry


def list_methods() -> dict[str, str]:
    """The registered pruning methods: {name: label}."""
    return {name: m.label for name, m in registry.METHODS.items()}


def apply(model: nn.Module, method: str, **options: Any) -> nn.Module:
    """Apply the method called `method` to `model` in place with its options and return it: e.g.
    "dynamicvit" (base_rate, schedule, locations; its score predictors then need fine-tuning),
    "training_free" (the same options, nothing to train), "merging" (r, or mac_ratio), "block"
    (keep_heads, keep_mlp fractions, ranked by weight magnitude)."""
    return registry.apply(model, method, **options)


def count(model: nn.Module, img_size: int | None = None) -> dict[str, Any]:
    """Params and MACs of one image at batch 1, eval mode (`measure.count`): {"params", "macs",
    "flops", "input_shape", ...}."""
    return counts.count(model, img_size=img_size)


def benchmark(model: nn.Module, pruned: nn.Module, batch_size: int = 16, repeats: int = 10,
              threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """Latency of `model` against `pruned`, timed interleaved in this process in PyTorch, with the
    MAC ratio the speedup is measured against: {"baseline_ms", "variant_ms", "speedup",
    "mac_ratio", "speedup_over_mac_ratio", ...}."""
    base, small = count(model), count(pruned)
    shape = [batch_size, *base["input_shape"][1:]]
    return latency.benchmark(model, pruned, shape, repeats=repeats, threads=threads, precision=precision,
                             baseline_macs=base["macs"], variant_macs=small["macs"])


def export_onnx(model: nn.Module, path: str | os.PathLike, check: bool = True) -> dict[str, Any]:
    """Write `model` as ONNX (dynamic batch axis) and, with `check`, compare it with PyTorch in
    onnxruntime (`export.verify`'s batches): {"path", "kind", "bytes", "check": {"ok", "max_abs_diff", ...}}."""
    info = export.export_onnx(model, path)
    if check:
        info["check"] = export.verify(model, info["path"])
    return info
