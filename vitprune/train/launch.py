"""Run one function on N processes (one machine or several) through accelerate's notebook
launcher, and hand local rank 0's return value back to the caller.

Why the notebook launcher and not `accelerate launch` of a script: a notebook's training job
is live Python state (a DeiT whose class DynamicViT swapped, block-pruning gates with their
forward hooks, loss closures, an `on_step` pruner that keeps a log). `accelerate.notebook_launcher`
forks the kernel, so every worker inherits that state as it is, with nothing to serialise; the
same call works in JupyterLab and under papermill. What forking asks in return: the parent may
not have initialised CUDA or an accelerate state before it forks. vitprune's engine runs every
device step of an N-process run inside the workers, so the notebook's own process only builds
models and counts MACs on the CPU (`launch.run` resets accelerate's shared state and refuses a
parent that touched CUDA; `plan` answers its device questions through `vitprune.train.hardware`, which
never initialises CUDA). Each forked worker computes with one CPU thread (OpenMP's pool does
not survive a fork), so on a CPU-only machine use as many processes as cores: `num_processes:
auto` gives one per GPU, or one per core without GPUs.

Multi-node: accelerate's own config (`accelerate config`, or a YAML passed as
`launch_config`) gives `num_machines`, `machine_rank`, `main_process_ip`,
`main_process_port`, `num_processes` (accelerate counts all machines' processes) and
`mixed_precision`; every machine runs the same notebook with its own config file and the
workers meet at the main process's address (torch elastic, static rendezvous). Each machine's
local rank 0 returns the result, so no shared filesystem is needed for it.

With one process in all, `run` just calls the function in this process.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vitprune import param_rules
from vitprune.errors import UserError
from vitprune.train import hardware

AUTO = "auto"  # num_processes: one per GPU, else per core; mixed_precision: bf16 where native (vitprune.train.hardware)
MIXED_PRECISION = tuple(p for p in param_rules.CHOICES["mixed_precision"] if p != AUTO)
RESULT_FILE = "result.pt"


@dataclass(frozen=True)
class Plan:
    """Where a launched job runs: processes per machine, machines, and their precision."""

    num_processes: int = 1  # per machine
    mixed_precision: str = "no"
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = "127.0.0.1"
    main_process_port: int | None = None
    config_file: str = ""
    device: str = "cpu"  # what the workers compute on: cuda when GPUs are visible (and the config does not say use_cpu)

    @property
    def world_size(self) -> int:
        return self.num_processes * self.num_machines

    def describe(self) -> dict[str, Any]:
        """What a run's metrics record: num_processes (all machines), mixed_precision, machines, device."""
        return {"num_processes": self.world_size, "mixed_precision": self.mixed_precision, "device": self.device,
                "num_machines": self.num_machines, "launch_config": self.config_file or None}


def plan(num_processes: int | str = 1, mixed_precision: str = "no", launch_config: str = "") -> Plan:
    """Validate the notebook parameters (and read accelerate's config file when one is given).
    Never initialises CUDA here (`vitprune.train.hardware` asks NVML / nvidia-smi), so the caller can still fork.

    `num_processes` "auto": one per visible GPU, else one one-thread worker per core (`hardware.auto_processes`);
    more processes per machine than visible GPUs is refused (accelerate would put two on one GPU, which NCCL refuses).
    With `launch_config` (an accelerate config file), the file decides; `num_processes` / `mixed_precision` may then only
    repeat what it says (or stay at their defaults 1 / "no", or "auto"). `mixed_precision` "auto" becomes
    bf16 where `hardware.native_bf16()`, else "no"."""
    if num_processes != AUTO and (isinstance(num_processes, bool) or not isinstance(num_processes, int)
                                  or num_processes < 1):
        raise UserError(f"num_processes must be an integer >= 1 or {AUTO!r}, got {num_processes!r}")
    if mixed_precision not in (*MIXED_PRECISION, AUTO):
        raise UserError(f"mixed_precision must be one of {', '.join(MIXED_PRECISION)} or {AUTO}, "
                        f"got {mixed_precision!r}")
    if not launch_config:
        if mixed_precision == AUTO:
            mixed_precision = "bf16" if hardware.native_bf16() else "no"
        per_machine = hardware.auto_processes() if num_processes == AUTO else num_processes
        _check_gpus(per_machine, "num_processes")
        return Plan(num_processes=per_machine, mixed_precision=mixed_precision,
                    device="cuda" if hardware.gpu_count() else "cpu")
    path = Path(launch_config).expanduser()
    if not path.is_file():
        raise UserError(f"launch_config {launch_config!r} does not exist; write one with `accelerate config "
                        f"--config_file {launch_config}` or leave launch_config empty")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        cfg = load_config_from_file(str(path))
    except Exception as exc:  # noqa: BLE001 - accelerate raises several types for a bad file
        raise UserError(f"launch_config {path}: accelerate cannot read it ({exc})") from exc
    machines = int(getattr(cfg, "num_machines", 1) or 1)
    total = int(getattr(cfg, "num_processes", -1) or -1)
    if total < 1:
        raise UserError(f"launch_config {path}: num_processes is not set; re-run `accelerate config`")
    if total % machines:
        raise UserError(f"launch_config {path}: num_processes {total} (all machines) is not a multiple of "
                        f"num_machines {machines}")
    precision = str(getattr(cfg, "mixed_precision", "no") or "no").lower()
    if precision not in MIXED_PRECISION:
        raise UserError(f"launch_config {path}: mixed_precision {precision!r} is not one of {MIXED_PRECISION}")
    if num_processes not in (1, AUTO, total // machines):
        raise UserError(f"num_processes {num_processes} disagrees with launch_config {path} "
                        f"({total // machines} per machine); set one of them")
    if mixed_precision not in ("no", AUTO, precision):
        raise UserError(f"mixed_precision {mixed_precision!r} disagrees with launch_config {path} ({precision!r})")
    on_cpu = bool(getattr(cfg, "use_cpu", False)) or not hardware.gpu_count()
    if not on_cpu:
        _check_gpus(total // machines, f"launch_config {path}: num_processes / num_machines")
    rank = int(getattr(cfg, "machine_rank", 0) or 0)
    if not 0 <= rank < machines:
        raise UserError(f"launch_config {path}: machine_rank {rank} must be in [0, {machines})")
    ip = getattr(cfg, "main_process_ip", None) or "127.0.0.1"
    port = getattr(cfg, "main_process_port", None)
    if machines > 1 and (not getattr(cfg, "main_process_ip", None) or not port):
        raise UserError(f"launch_config {path}: several machines need main_process_ip and main_process_port")
    return Plan(num_processes=total // machines, mixed_precision=precision, num_machines=machines,
                machine_rank=rank, main_process_ip=str(ip), main_process_port=int(port) if port else None,
                config_file=str(path), device="cpu" if on_cpu else "cuda")


def _check_gpus(per_machine: int, what: str) -> None:
    gpus = hardware.gpu_count()
    if 0 < gpus < per_machine:
        raise UserError(f"{what} asks for {per_machine} processes on this machine but it has {gpus} visible GPU(s); "
                        f"use num_processes: auto (one per GPU) or at most {gpus}")


def free_port() -> int:
    """A TCP port nobody listens on now (for a one-machine rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(fn: Callable[..., Any], args: tuple, out_dir: str) -> None:
    """Body of each forked process: run `fn`, local rank 0 saves what it returned; any error
    is written down (type, first line, traceback) for the parent to report."""
    import torch

    # GNU OpenMP's thread pool does not survive fork: a worker whose first parallel region asks
    # for more than one thread waits forever for threads that exist only in the parent (measured
    # here: a conv forward hangs). One compute thread per worker; on GPUs the device does the work.
    torch.set_num_threads(1)
    if hardware.gpu_count() == 0:  # accelerate picks gloo / MULTI_CPU only when told it is on the CPU
        os.environ["ACCELERATE_USE_CPU"] = "true"
        # else accelerate's MULTI_CPU state sets physical cores / processes threads (warning that it
        # does): more than one on a bigger machine, the hang above
        os.environ["OMP_NUM_THREADS"] = "1"
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    try:
        value = fn(*args)
        if local_rank == 0:
            tmp = Path(out_dir) / (RESULT_FILE + ".tmp")
            torch.save(value, tmp)
            os.replace(tmp, Path(out_dir) / RESULT_FILE)
    except BaseException as exc:
        (Path(out_dir) / f"error_rank{rank}.txt").write_text(
            f"{type(exc).__name__}\n{exc}\n{traceback.format_exc()}")
        raise


def _child_error(out_dir: Path) -> tuple[str, str] | None:
    files = sorted(out_dir.glob("error_rank*.txt"))
    if not files:
        return None
    ename, _, rest = files[0].read_text().partition("\n")
    message = next((line for line in rest.splitlines() if line.strip()), "")
    return ename, message


class _WithoutLaunchBanner:
    """sys.stdout that drops accelerate's "Launching training on N CUDAs." banner (it names CUDA
    whenever torch was built with it, also for CPU workers) and passes every other write on, in
    this process and in the forked workers alike."""

    BANNER = "Launching training on "

    def __init__(self, target):
        self.target = target
        self._drop_newline = False

    def write(self, text: str) -> int:
        if text.startswith(self.BANNER):
            self._drop_newline = True
            return len(text)
        if self._drop_newline and text == "\n":
            self._drop_newline = False
            return len(text)
        self._drop_newline = False
        return self.target.write(text)

    def __getattr__(self, name: str):
        return getattr(self.target, name)


def run(fn: Callable[..., Any], args: tuple = (), launch: Plan | None = None) -> Any:
    """`fn(*args)` on `launch.world_size` processes; returns local rank 0's return value
    (it must be picklable by torch.save). One process in all: a plain call, no fork."""
    launch = launch or Plan()
    if launch.world_size == 1:
        return fn(*args)
    import torch
    from accelerate import notebook_launcher
    from accelerate.state import AcceleratorState

    if torch.cuda.is_initialized():  # not is_available(): without NVML it initialises the driver (poisons the fork)
        raise UserError("CUDA is already initialised in this process, so it cannot fork GPU workers: with "
                        "num_processes > 1 run every training/evaluation through vitprune.train.engine with the same "
                        "num_processes (restart the kernel first)")
    # an Accelerator built earlier in this process (e.g. a 1-process evaluation) would be
    # inherited by the workers; they build their own
    AcceleratorState._reset_state(reset_partial_state=True)
    out_dir = Path(tempfile.mkdtemp(prefix="vitprune-launch-"))
    port = launch.main_process_port or free_port()
    print(f"launching {launch.num_processes} {launch.device.upper()} worker processes on this machine"
          + (f" (machine {launch.machine_rank} of {launch.num_machines})" if launch.num_machines > 1 else ""),
          flush=True)
    stdout = sys.stdout
    try:
        try:
            sys.stdout = _WithoutLaunchBanner(stdout)
            notebook_launcher(_worker, (fn, args, str(out_dir)), num_processes=launch.num_processes,
                              mixed_precision=launch.mixed_precision, use_port=str(port),
                              master_addr=launch.main_process_ip, node_rank=launch.machine_rank,
                              num_nodes=launch.num_machines)
        except Exception as exc:
            child = _child_error(out_dir)
            if child is None:
                raise RuntimeError(f"the {launch.world_size}-process launch failed: {exc}") from exc
            ename, message = child
            if ename == UserError.__name__:
                raise UserError(message) from exc
            raise RuntimeError(f"a launched worker failed: {ename}: {message}") from exc
        result = out_dir / RESULT_FILE
        if not result.exists():
            raise RuntimeError(f"the {launch.world_size}-process launch returned no result (see its output above)")
        return torch.load(result, map_location="cpu", weights_only=True)
    finally:
        sys.stdout = stdout
        shutil.rmtree(out_dir, ignore_errors=True)

