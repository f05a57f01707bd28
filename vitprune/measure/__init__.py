"""Measurement: what a model costs (`counts`: params, MACs, FLOPs; units defined there) and how fast
it runs in PyTorch (`latency`: interleaved timing; onnxruntime is vitprune.deploy's). The names notebooks
call as `measure.X` are gathered here."""

from vitprune.measure.counts import SDPA_OP, baddbmm_mac_handle, count, count_params, input_shape_for, sdpa_mac_handle
from vitprune.measure.latency import BENCH_PRECISIONS, MIN_ROUND_MS, autocast_wrapped, benchmark, interleaved, paired_speedup, time_modules

__all__ = ["SDPA_OP", "baddbmm_mac_handle", "count", "count_params", "input_shape_for", "sdpa_mac_handle",
           "BENCH_PRECISIONS", "MIN_ROUND_MS", "autocast_wrapped", "benchmark", "interleaved", "paired_speedup",
           "time_modules"]
