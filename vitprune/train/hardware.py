"""What this machine computes on, asked without initialising CUDA in this process.

A notebook that later forks GPU workers (`vitprune.train.launch`) must not have touched the CUDA
runtime: a forked child of a process that did cannot use CUDA ("Cannot re-initialize CUDA in
forked subprocess", pytorch/pytorch#83973). `torch.cuda.is_available()`, `current_device()`,
`get_device_properties()` and `is_bf16_supported()` all go through the runtime. So GPUs are
counted through NVML (`torch.cuda.device_count()` asks NVML first and honours
CUDA_VISIBLE_DEVICES, as accelerate's `is_cuda_available()` does) and their compute capability
is read from `nvidia-smi`, as accelerate's `check_cuda_fp8_capability()` does.
"""

from __future__ import annotations

import os
import subprocess

import torch

# bf16 tensor cores (Ampere) and newer; older GPUs emulate bf16, slower than fp32
NATIVE_BF16_COMPUTE_CAPABILITY = (8, 0)
# forked CPU workers compute with one thread each (see launch._worker); one per core measured
# fastest on this 2-core machine (1.4x the img/s of one 2-thread process); more cores: not measured
MAX_CPU_PROCESSES = 8


def gpu_count() -> int:
    """CUDA GPUs this process may use (CUDA_VISIBLE_DEVICES honoured), counted through NVML."""
    if not torch.backends.cuda.is_built():
        return 0
    return max(int(torch.cuda.device_count()), 0)


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def gpu_compute_capabilities() -> list[tuple[int, int]] | None:
    """(major, minor) of each GPU `nvidia-smi` lists, or None when it cannot be asked."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        caps = [tuple(int(part) for part in line.strip().split(".")) for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return [(c[0], c[1] if len(c) > 1 else 0) for c in caps] or None


def native_bf16() -> bool:
    """Whether bf16 autocast runs on bf16 hardware here: GPUs of compute capability >= 8.0 (all
    of them, so every worker of a launch agrees), else a CPU with AVX512-BF16 or AMX. Elsewhere
    bf16 is emulated and slower than fp32. Unknown GPU capability (no nvidia-smi) counts as no."""
    if gpu_count() > 0:
        caps = gpu_compute_capabilities()
        return bool(caps) and min(caps) >= NATIVE_BF16_COMPUTE_CAPABILITY
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())  # torch==2.14.1 has both


def auto_processes() -> int:
    """`num_processes: auto`: one per visible GPU; without GPUs one one-thread worker per core
    (at most MAX_CPU_PROCESSES)."""
    gpus = gpu_count()
    return gpus if gpus > 0 else max(1, min(cpu_cores(), MAX_CPU_PROCESSES))


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe() -> dict[str, object]:
    """Device facts a run records: GPU count and capabilities, the CPU, its cores and the vector
    kernels torch picked (no CUDA initialised). fp32 results differ in the last digits between CPUs
    whose kernels differ (AVX2 vs AVX512): a fine-tune's top-1 by tenths of a point."""
    gpus = gpu_count()
    caps = gpu_compute_capabilities() if gpus else None
    return {"gpus": gpus, "gpu_compute_capability": [f"{a}.{b}" for a, b in caps] if caps else None,
            "cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_cores": cpu_cores(), "native_bf16": native_bf16()}
