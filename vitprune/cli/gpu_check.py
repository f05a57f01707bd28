"""`python -m vitprune gpu-check`: the first command on a GPU machine (`make gpu-check`).

Three stages, each timed and kept going after another fails: the `smoke` profile end to end
(all six notebooks) on one process, again on every visible GPU (`num_processes: auto`), and
`benchmarks/gpu_throughput.py` on the study's DeiT-B with the ImageNet hours per epoch it
implies. One summary, `gpu_check.md` + `.json`, goes to the runs root. Without a GPU it refuses,
unless `--allow-cpu` (the rehearsal here: one process, then one worker per core)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from vitprune.errors import UserError
from vitprune.study import config, pipeline, run_folders
from vitprune.train import hardware

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000


def _stage(name: str, work: Callable[[], Any]) -> dict[str, Any]:
    print(f"[gpu-check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        out = {"stage": name, "ok": True, "result": work()}
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the summary; the next stage still runs
        out = {"stage": name, "ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    out["wall_time_s"] = round(time.perf_counter() - start, 1)
    print(f"[gpu-check] {name}: {'ok' if out['ok'] else 'FAILED: ' + out['error']} ({out['wall_time_s']} s)", flush=True)
    return out


def _smoke(root: Path, num_processes: int | str) -> dict[str, Any]:
    pipeline.run_profile("smoke", overrides={"num_processes": num_processes, "mixed_precision": "auto"},
                         runs_root=str(root), force=True)
    base = pipeline.headline(run_folders.run_dir(str(root), "smoke", "01_deit_baseline"))
    return {"runs": str(root / "smoke"), "baseline": base}


def _throughput(model: str, img_size: int, batch_size: int, steps: int) -> dict[str, Any]:
    script = config.project_root() / "benchmarks" / "gpu_throughput.py"
    precision = "bf16" if hardware.native_bf16() else "no"
    cmd = [sys.executable, str(script), "--model", model, "--img-size", str(img_size), "--batch-size",
           str(batch_size), "--steps", str(steps), "--precision", precision, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"gpu_throughput.py exited {done.returncode}: {last}")
    return json.loads(done.stdout)


def epoch_hours(throughput: dict[str, Any], gpus: int) -> dict[str, float]:
    """Hours of one ImageNet-1k epoch (1,281,167 training / 50,000 validation images) on `gpus`
    GPUs from one GPU's measured img/s, assuming linear scaling (a lower bound on the time)."""
    out = {f"train_{k}": IMAGENET_TRAIN / (rate * gpus) / 3600 for k, rate in throughput["train_img_per_s"].items()}
    out.update({f"eval_{k}": IMAGENET_VAL / (rate * gpus) / 3600 for k, rate in throughput["eval_img_per_s"].items()})
    return out


def summary_markdown(facts: dict[str, Any], stages: list[dict[str, Any]]) -> str:
    lines = [f"# gpu-check: {facts['gpus']} GPU(s) (compute capability {facts['gpu_compute_capability']}), "
             f"{facts['cpu_cores']} CPU cores, native bf16: {facts['native_bf16']}", "",
             "| stage | result | wall time (s) |", "|---|---|---|"]
    for s in stages:
        what = s.get("error") or s["result"].get("baseline") or s["result"].get("model")
        lines.append(f"| {s['stage']} | {'ok' if s['ok'] else 'FAILED'}: {what} | {s['wall_time_s']} |")
    bench = next((s["result"] for s in stages if s["ok"] and "train_img_per_s" in s["result"]), None)
    if bench:
        lines += ["", f"Throughput ({bench['model']}, {bench['img_size']} px, batch {bench['batch_size']}, "
                      f"{bench['precision']}, {bench['device']}) and ImageNet hours per epoch (linear scaling):", "",
                  "| row | img/s (one device) | h/epoch, 1 device | h/epoch, 8 devices |", "|---|---|---|---|"]
        one, eight = bench["hours_per_epoch"]["1"], bench["hours_per_epoch"]["8"]
        for kind in ("train", "eval"):
            for name, rate in bench[f"{kind}_img_per_s"].items():
                key = f"{kind}_{name}"
                lines.append(f"| {kind} {name} | {rate:.1f} | {one[key]:.2f} | {eight[key]:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-root", default=str(config.project_root() / "runs" / "gpu_check"),
                        help="where the smoke runs and the summary go (default: runs/gpu_check)")
    parser.add_argument("--allow-cpu", action="store_true", help="rehearse on the CPU when no GPU is visible")
    parser.add_argument("--model", default="deit_base_patch16_224", help="throughput model (the study's DeiT-B)")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64, help="throughput batch on one device")
    parser.add_argument("--steps", type=int, default=10, help="timed throughput steps per row")
    args = parser.parse_args(argv)
    facts = hardware.describe()
    if not facts["gpus"] and not args.allow_cpu:
        raise UserError("gpu-check: no CUDA GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES); "
                        "pass --allow-cpu to rehearse it on the CPU")
    root = Path(args.runs_root).expanduser().resolve()
    pipeline.check_runs_root(root)
    stages = [_stage("smoke profile, 1 process", lambda: _smoke(root / "one_process", 1))]
    if hardware.auto_processes() > 1:
        stages.append(_stage(f"smoke profile, {hardware.auto_processes()} processes (auto)",
                             lambda: _smoke(root / "all_devices", "auto")))

    def throughput():
        out = _throughput(args.model, args.img_size, args.batch_size, args.steps)
        out["hours_per_epoch"] = {str(n): epoch_hours(out, n) for n in (1, 8)}
        return out

    stages.append(_stage("gpu_throughput.py", throughput))
    text = summary_markdown(facts, stages)
    root.mkdir(parents=True, exist_ok=True)
    (root / "gpu_check.json").write_text(json.dumps({"hardware": facts, "stages": stages}, indent=2))
    (root / "gpu_check.md").write_text(text)
    print(text + f"summary: {root / 'gpu_check.md'}", flush=True)
    return 0 if all(s["ok"] for s in stages) else 1
