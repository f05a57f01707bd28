"""A released baseline: a checkpoint committed with its sha256 and the record of the run that
trained it, so the embedded study starts, as the study did, from a fixed, converged model.

The study fine-tuned the released DeiT-B; the embedded profile fine-tunes `releases/fmnist/model.pt`,
trained once by `make baseline` (notebook 01 with `params/<profile>/baseline.yaml`) and copied
into `releases/<profile>/` by the explicit `python -m vitprune release RUN_DIR` step, so a
re-run of the training never replaces the release by itself. Beside the checkpoint,
`release.json` holds its sha256, the top-1 it scored, and the run's metrics (training curve
included) and manifest. Notebook 01 evaluates the file and must reproduce that top-1
(`check_top1`). Torch-free: the pipeline checks the hash before any kernel starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from vitprune.errors import UserError

FORMAT = "vitprune-release/1"
RECORD_FILE = "release.json"
CHECKPOINT_FILE = "model.pt"
RELEASES_DIR = "releases"
TOP1_TOLERANCE = 0.1
"""Points of top-1 by which a re-evaluation of the released file may differ from its record.
fp32 inference of fixed weights on another CPU (AVX2 vs AVX512 kernels sum in another order)
changes logits in their last bits, which flips only images whose two best logits tie to that
precision: measured 0 of 10,000 between thread counts and batch sizes here; 0.1 points
(10 images) leaves room for another CPU and stays far below the seed spread of any fine-tune."""
RETRAIN = "train and release a new one: `make baseline`, then `python -m vitprune release RUN_DIR`"


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_path(checkpoint: str | os.PathLike) -> Path:
    return Path(checkpoint).with_name(RECORD_FILE)


def is_release(checkpoint: str | os.PathLike) -> bool:
    """Whether `checkpoint` names a released file: a release record beside it, or a path in a
    `releases/` folder (whose file or record has gone missing)."""
    path = Path(checkpoint)
    return record_path(path).is_file() or RELEASES_DIR in path.parts


def check(checkpoint: str | os.PathLike, shown_as: str | None = None, where: str = "") -> dict[str, Any]:
    """The release record of `checkpoint` after checking that the file is the one released (its
    sha256); one UserError line naming the file, what is wrong and `make baseline` otherwise.
    `shown_as`: the path as the user wrote it; `where`: what names it (a parameter of a YAML file)."""
    path = Path(checkpoint)
    name = shown_as or str(path)
    record_file = record_path(path)
    shown_record = Path(name).with_name(RECORD_FILE)
    restore = f"restore it with `git checkout -- {Path(name).parent}` or {RETRAIN}"
    if not record_file.is_file():
        raise UserError(f"{where}{name}: no release record ({RECORD_FILE}) beside it, so it is not a released "
                        f"baseline; {restore}")
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{where}{shown_record}: not a readable release record ({exc}); {restore}") from exc
    if record.get("format") != FORMAT or not isinstance(record.get("sha256"), str):
        raise UserError(f"{where}{shown_record}: not a {FORMAT} record; {restore}")
    if not path.is_file():
        raise UserError(f"{where}{name} is missing: it is the released baseline ({shown_record} records it); {restore}")
    actual = sha256(path)
    if actual != record["sha256"]:
        raise UserError(f"{where}{name} is not the released file: its sha256 is {actual[:12]}..., {shown_record} "
                        f"records {record['sha256'][:12]}...; {restore}")
    return record


def check_top1(record: dict[str, Any], top1: float, eval_samples: int) -> float:
    """The difference (points) between a re-evaluation and the release's recorded top-1 on the same
    evaluation set; a UserError when it exceeds TOP1_TOLERANCE (a file or data that changed)."""
    if int(eval_samples) != int(record["eval_samples"]):
        raise UserError(f"the release was scored on {record['eval_samples']} images, this evaluation used "
                        f"{eval_samples}: evaluate the released baseline on the whole split (eval_per_class 0)")
    delta = float(top1) - float(record["top1"])
    if abs(delta) > TOP1_TOLERANCE:
        raise UserError(f"the released baseline scored {top1:.2f} % here, {delta:+.2f} points from the "
                        f"{record['top1']:.2f} % its record holds (tolerance {TOP1_TOLERANCE} points): the data "
                        f"cache or the evaluation changed; rebuild the cache (notebook 00) or {RETRAIN}")
    return delta


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """What a run that starts from the release records of it (notebook 01's metrics)."""
    return {"sha256": record["sha256"], "top1": record["top1"], "released": record.get("released"),
            "budget": record.get("budget"), "command": record.get("command")}


def write(run_dir: str | os.PathLike, target: str | os.PathLike, metrics: dict[str, Any],
          manifest: dict[str, Any], command: str, replace: bool = False) -> dict[str, Any]:
    """Copy a finished training run's `model.pt` to `target` (`releases/<profile>/model.pt`) with its
    `release.json` beside it: sha256, the top-1 it scored, its training budget, the run's metrics
    (training curve included) and manifest. An existing release is replaced only with `replace`.
    `command` is what trained it. The run itself is checked by the caller (a pipeline run that
    finished)."""
    source, target = Path(run_dir) / CHECKPOINT_FILE, Path(target)
    if not metrics.get("trained"):
        raise UserError(f"{run_dir} evaluated a model without training it: release a run of `make baseline`")
    if not source.is_file():
        raise UserError(f"{source} is missing: the run did not save its model")
    if (target.exists() or record_path(target).exists()) and not replace:
        raise UserError(f"{target} is already released; pass --replace to put this run in its place")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    record = {"format": FORMAT, "checkpoint": target.name, "sha256": sha256(tmp), "bytes": tmp.stat().st_size,
              "released": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "source_run": str(Path(run_dir).resolve()),
              "command": command, "model_name": metrics.get("model_name"),
              "top1": metrics["top1"], "top5": metrics.get("top5"), "eval_samples": metrics["eval_samples"],
              "eval_split": metrics.get("eval_split"), "crop_pct": metrics.get("crop_pct"),
              "params": metrics.get("params"), "macs": metrics.get("macs"), "budget": metrics.get("budget"),
              "metrics": metrics, "manifest": manifest}
    os.replace(tmp, target)
    record_tmp = record_path(target).with_name(RECORD_FILE + ".tmp")
    record_tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(record_tmp, record_path(target))
    return record
