"""The GPU path without a GPU: torch.cuda faked so that 1 or 8 GPUs are visible through NVML and
anything that would initialise CUDA in this process (the runtime's device count, lazy init) fails
the test. Planning every profile's launch, `auto` process counts, too many processes, and the
launch guard must all work without touching CUDA, or the forked GPU workers could not use it."""

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from vitprune.errors import UserError
from vitprune.study import config
from vitprune.train import hardware, launch

PARAMS = Path(__file__).resolve().parents[1] / "params"
SCALE_KEYS = ("num_processes", "mixed_precision", "launch_config")


class CudaInitialised(AssertionError):
    pass


def _touched(*_args, **_kwargs):
    raise CudaInitialised("CUDA was initialised (or its driver asked) in the parent process")


@pytest.fixture
def fake_gpus(monkeypatch):
    """fake_gpus(n, capability): n visible GPUs of that compute capability, CUDA untouchable."""
    def install(n: int, capability=(8, 0)):
        monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
        monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
        monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: n)  # what NVML reports
        monkeypatch.setattr(torch.cuda, "_lazy_init", _touched)
        monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", _touched)  # cudaGetDeviceCount: poisons fork
        monkeypatch.setattr(torch.cuda, "_cached_device_count", None)
        monkeypatch.setattr(hardware, "gpu_compute_capabilities", lambda: [capability] * n if n else None)
    return install


def _profile_scales():
    """(profile, notebook, the launch parameters it runs with) for every notebook of every profile."""
    for notebook in config.NOTEBOOKS:
        declared = config.declared_parameters(config.notebook_path(notebook))
        if "num_processes" not in declared:
            continue
        for path in sorted(PARAMS.glob(f"*/{notebook}.yaml")):
            values = yaml.safe_load(path.read_text()) or {}
            scale = {k: values.get(k, declared[k].default) for k in SCALE_KEYS}
            yield path.parent.name, notebook, scale


@pytest.mark.parametrize("gpus", [1, 8])
def test_every_profile_plans_without_initialising_cuda(fake_gpus, gpus):
    fake_gpus(gpus)
    seen = set()
    for profile, notebook, scale in _profile_scales():
        plan = launch.plan(**scale)
        seen.add(profile)
        assert plan.num_processes <= gpus, (profile, notebook)
        if scale["num_processes"] == launch.AUTO:
            assert plan.num_processes == gpus, (profile, notebook)
        if scale["mixed_precision"] == launch.AUTO:
            assert plan.mixed_precision == "bf16", (profile, notebook)
    assert {"fmnist", "imagenet", "smoke"} <= seen


def test_auto_process_count(fake_gpus, monkeypatch):
    fake_gpus(8)
    assert launch.plan(launch.AUTO).num_processes == 8
    fake_gpus(1)
    assert launch.plan(launch.AUTO).num_processes == 1
    fake_gpus(0)
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 2)
    assert launch.plan(launch.AUTO).num_processes == 2  # one one-thread worker per core
    monkeypatch.setattr(hardware, "cpu_cores", lambda: 64)
    assert launch.plan(launch.AUTO).num_processes == hardware.MAX_CPU_PROCESSES


def test_more_processes_than_gpus_is_one_clear_error(fake_gpus, tmp_path):
    fake_gpus(1)
    with pytest.raises(UserError, match=r"^num_processes asks for 2 processes on this machine but it has 1 "
                                        r"visible GPU\(s\); use num_processes: auto"):
        launch.plan(2, "auto")
    fake_gpus(4)
    cfg = tmp_path / "two_nodes.yaml"  # 16 processes over 2 machines: 8 per machine, on a 4-GPU machine
    cfg.write_text("distributed_type: MULTI_GPU\nmachine_rank: 0\nmain_process_ip: 10.0.0.1\n"
                   "main_process_port: 29555\nmixed_precision: bf16\nnum_machines: 2\nnum_processes: 16\n")
    with pytest.raises(UserError, match="asks for 8 processes on this machine but it has 4 visible GPU"):
        launch.plan(launch.AUTO, "auto", str(cfg))


def test_bf16_is_native_only_from_compute_capability_8(fake_gpus):
    fake_gpus(8, capability=(7, 0))  # V100: bf16 emulated, slower than fp32
    assert launch.plan(8, "auto").mixed_precision == "no"
    fake_gpus(8, capability=(9, 0))
    assert launch.plan(8, "auto").mixed_precision == "bf16"


def test_compute_capability_is_read_from_nvidia_smi(monkeypatch):
    def smi(cmd, **kwargs):
        assert cmd[0] == "nvidia-smi" and "--query-gpu=compute_cap" in cmd
        return subprocess.CompletedProcess(cmd, 0, stdout="8.0\n8.6\n")
    monkeypatch.setattr(hardware.subprocess, "run", smi)
    assert hardware.gpu_compute_capabilities() == [(8, 0), (8, 6)]

    def missing(cmd, **kwargs):
        raise FileNotFoundError("nvidia-smi")
    monkeypatch.setattr(hardware.subprocess, "run", missing)
    assert hardware.gpu_compute_capabilities() is None


def _answer():
    return {"value": 42}


def test_launch_forks_without_touching_cuda(fake_gpus, monkeypatch):
    """launch.run's guard asked torch.cuda.is_available(), which (without NVML) initialises the
    driver and makes every forked worker fail "Cannot re-initialize CUDA in forked subprocess"."""
    import accelerate

    fake_gpus(8)
    calls = []

    def fake_notebook_launcher(function, args, num_processes, mixed_precision, **kwargs):
        calls.append((num_processes, mixed_precision))
        threads = torch.get_num_threads()
        try:
            function(*args)  # the worker body, in this process (it sets one thread)
        finally:
            torch.set_num_threads(threads)

    monkeypatch.setattr(accelerate, "notebook_launcher", fake_notebook_launcher)
    assert launch.run(_answer, (), launch.plan(launch.AUTO, "auto")) == {"value": 42}
    assert calls == [(8, "bf16")]


def test_gpu_check_refuses_a_machine_without_gpus(fake_gpus):
    from vitprune.cli import gpu_check

    fake_gpus(0)
    with pytest.raises(UserError, match="no CUDA GPU is visible .* pass --allow-cpu"):
        gpu_check.main([])


def test_gpu_check_runs_every_stage_and_writes_one_summary(fake_gpus, monkeypatch, tmp_path):
    """Stages are faked (the real ones: the smoke pipeline twice and the throughput script, 3 min
    on this CPU); a failing stage is reported and the next one still runs; exit status 1."""
    from vitprune.cli import gpu_check

    fake_gpus(8)
    smoke_calls = []

    def smoke(root, num_processes):
        smoke_calls.append(num_processes)
        if num_processes == "auto":
            raise UserError("04_combination/seed_0 failed: RuntimeError: a worker failed")
        return {"runs": str(root), "baseline": "top-1 35.00 %"}

    rates = {"train_img_per_s": {"dynamicvit": 100.0, "block_pruned": 200.0},
             "eval_img_per_s": {"baseline": 1000.0, "dynamicvit": 1500.0, "block_pruned": 2000.0}}
    monkeypatch.setattr(gpu_check, "_smoke", smoke)
    monkeypatch.setattr(gpu_check, "_throughput", lambda *a: {"model": "deit_base_patch16_224", "img_size": 224,
                                                               "batch_size": 64, "precision": "bf16",
                                                               "device": "cuda", **rates})
    assert gpu_check.main(["--runs-root", str(tmp_path)]) == 1
    assert smoke_calls == [1, "auto"]
    text = (tmp_path / "gpu_check.md").read_text()
    assert "| smoke profile, 8 processes (auto) | FAILED: UserError: 04_combination/seed_0 failed" in text
    # 1,281,167 images at 100 img/s on 1 GPU: 3.56 h; on 8: 0.44 h
    assert "| train dynamicvit | 100.0 | 3.56 | 0.44 |" in text
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["hardware"]["gpus"] == 8 and [s["ok"] for s in summary["stages"]] == [True, False, True]
