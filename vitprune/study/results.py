"""Per-run metrics files (`metrics.json` beside each executed notebook) and the runs of a profile.

`write_metrics`/`read_metrics` are what every notebook calls; `metrics_row` is one model's row;
`collect_runs` gathers a profile's model runs (notebooks 01-04) and `fold_seeds` folds a
configuration's seeds into one point. Table 1 is `study.table1`, the equal-MAC and baseline
comparisons `study.comparisons`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from vitprune.errors import UserError
from vitprune.study import config, run_folders, stats

METRICS_FILE = "metrics.json"


def _jsonable(value: Any) -> Any:
    """Plain JSON types (numpy/torch scalars and arrays, Paths); NaN/inf become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, Any]) -> Path:
    """Write metrics.json atomically (a reader never sees half a file)."""
    path = Path(run_dir) / METRICS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_jsonable(metrics), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        raise UserError(f"{path} does not exist: run the notebook that writes it first "
                        f"(python -m vitprune run --profile PROFILE --only NOTEBOOK)")
    return json.loads(path.read_text())


ROW_KEYS = ("method", "label", "model_name", "img_size", "params", "macs", "flops", "top1", "top5", "eval_samples")


def metrics_row(method: str, label: str, *, model_name: str | None, img_size: int | None,
                count: dict[str, Any], evaluation: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """One model run's metrics row, with the keys `collect_runs`, Table 1 and the plots read
    (ROW_KEYS), then the run's own `extra` keys.

    `count` is `measure.count`'s dict (params; MACs per image at batch 1; FLOPs = 2 x MACs),
    `evaluation` `engine.evaluate`'s (top1/top5 in percent, num_samples). An `extra` key that
    repeats a ROW_KEYS key is an error (it would silently replace a measured value)."""
    clash = sorted(set(extra) & set(ROW_KEYS))
    if clash:
        raise ValueError(f"metrics_row: {clash} are measured from count/evaluation; do not pass them as extra keys")
    row = {"method": method, "label": label, "model_name": model_name, "img_size": img_size,
           "params": int(count["params"]), "macs": int(count["macs"]), "flops": int(count["flops"]),
           "top1": float(evaluation["top1"]), "top5": float(evaluation["top5"]),
           "eval_samples": int(evaluation["num_samples"])}
    return {**row, **extra}


def versus_baseline(count: dict[str, Any], baseline_count: dict[str, Any], baseline_top1: float | None) -> dict[str, Any]:
    """The baseline columns of a pruned run's row: baseline_params, baseline_macs,
    baseline_top1 and mac_ratio = baseline MACs / this model's MACs (> 1: cheaper)."""
    return {"baseline_params": int(baseline_count["params"]), "baseline_macs": int(baseline_count["macs"]),
            "baseline_top1": baseline_top1, "mac_ratio": baseline_count["macs"] / count["macs"]}


MODEL_NOTEBOOKS = ("01_deit_baseline", "02_token_pruning", "03_block_pruning", "04_combination")
# notebook 04's two orders: {row method: (label, marker)}; the single methods come from the registry
COMBINATIONS = {"token_then_block": ("DynamicViT → block pruning", "D"),
                "block_then_token": ("block pruning → DynamicViT", "P")}


def method_order() -> tuple[str, ...]:
    """Every row method in table order: the baseline, the token methods, the width methods (each in
    registration order), the combinations."""
    from vitprune.methods import registry  # local: the run processes import results without torch
    names = [m.name for m in registry.token_methods()]
    return ("baseline", *names, *(n for n in registry.METHODS if n not in names), *COMBINATIONS)


def _run_command(profile: str, notebook: str, variant: str | None, manifest: dict | None) -> str:
    """The command that (re)makes one run; a sweep point is pinned with -p key=value."""
    cmd = f"python -m vitprune run --profile {profile} --only {notebook}"
    if variant and manifest:
        params = manifest.get("params", {})
        pins = [f"{k}={params[k]}" for k in sorted(params)
                if k not in config.INJECTED and f"{k}_{params[k]}" in variant.split("__")]
        cmd += "".join(f" -p {pin}" for pin in pins)
    return cmd


def collect_runs(runs_root: str | os.PathLike | None, profile: str,
                 seeds: Sequence[int] | None = None, left_out: list[str] | None = None,
                 study: bool = True) -> list[dict[str, Any]]:
    """Every model run (notebooks 01-04) of a profile that wrote metrics.json; with `seeds`,
    only those fine-tune seeds of the SEEDED notebooks (02-04) (other seeds on disk are left out);
    without `study`, not the runs of study.yaml's named points (`run --study` makes them).

    Returns one dict per run: {"run" ("02_token_pruning/base_rate_0.7"), "notebook",
    "variant", "profile", "run_dir", "command", "metrics"}. Only runs the pipeline finished
    (manifest status ok) count; the others (a manifest that says failed, metrics written outside
    the pipeline without one) are left out and, with `left_out`, named there with the reason.
    A run's `.partial` folder (`run_folders.PARTIAL_SUFFIX`) is never a run. A metrics.json may hold
    extra table rows under `rows` (a list of metrics-like dicts, e.g. notebook 04's combinations
    and training-free rows); each becomes
    a run of its own named "<run>#<i>", inheriting the parent's keys it does not set. The
    parent's own summary is left out when a row has its method (it repeats that row).
    Missing notebooks are simply absent.
    """
    runs: list[dict[str, Any]] = []
    study_only = {} if study else _study_only_points(profile)
    for notebook in MODEL_NOTEBOOKS:
        base = run_folders.run_dir(runs_root, profile, notebook)
        for run_dir in run_folders.run_folders(runs_root, profile, notebook):
            if run_dir != base and run_dir.name.split("__")[0] in study_only.get(notebook, ()):
                continue
            path = run_dir / METRICS_FILE
            if not path.is_file():
                continue
            manifest = _read_json(run_dir / run_folders.MANIFEST_FILE)
            reason = not_a_run(run_dir, manifest)
            if reason:
                if left_out is not None:
                    left_out.append(f"{run_dir}: {reason}")
                continue
            try:
                metrics = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} is not valid JSON ({exc}); re-run the notebook "
                                f"(python -m vitprune run --profile {profile} --only {notebook} --force)") from exc
            variant = None if run_dir == base else run_dir.name
            seed = metrics.get("seed")
            if seeds is not None and notebook in config.SEEDED and isinstance(seed, int) and seed not in seeds:
                continue
            name = f"{notebook}/{variant}" if variant else notebook
            entry = {"run": name, "notebook": notebook, "variant": variant, "profile": profile,
                     "run_dir": str(run_dir), "command": _run_command(profile, notebook, variant, manifest)}
            extra = metrics.pop("rows", None) or []
            # A run's own summary that repeats one of its rows (same method) is not added twice.
            if not any(row.get("method") == metrics.get("method") for row in extra):
                runs.append({**entry, "metrics": metrics})
            inherit = {k: v for k, v in metrics.items() if k in ("model_name", "img_size", "eval_samples", "dataset", "seed")}
            for i, row in enumerate(extra):
                runs.append({**entry, "run": f"{name}#{i}", "metrics": {**inherit, **row}})
    return runs


def _study_only_points(profile: str) -> dict[str, set[str]]:
    """{notebook: names of the points only study.yaml adds} (what `run --study` runs)."""
    try:
        everything, usual = config.profile_points(profile, study=True), config.profile_points(profile)
    except UserError:  # a profile folder that is not there (runs of another checkout): nothing to leave out
        return {}
    return {nb: set(named) - set(usual.get(nb, {})) for nb, named in everything.items()}


def not_a_run(run_dir: Path, manifest: dict | None) -> str | None:
    """Why a folder holding a run's files is not a run the pipeline finished (None: it is one)."""
    if not manifest:
        return "metrics.json without a manifest (written outside the pipeline, e.g. papermill or a notebook by hand)"
    if manifest.get("status") != "ok":
        return f"manifest says {manifest.get('status')}"
    changed = run_folders.changed_files(run_dir, manifest)
    if changed:
        return f"{', '.join(changed[:3])} changed since the pipeline wrote it (re-run it: python -m vitprune run)"
    return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# ================================================================ seeds



def seed_of(run: dict[str, Any]) -> int | None:
    """The fine-tune seed of a SEEDED notebook's run (None for the baseline and the data)."""
    seed = run["metrics"].get("seed")
    return int(seed) if run.get("notebook") in config.SEEDED and isinstance(seed, int) else None


def point_of(run: dict[str, Any]) -> str:
    """The run's name without its seed: the runs of one configuration at several seeds share
    it ("02_token_pruning/base_rate_0.7__seed_1" -> "02_token_pruning/base_rate_0.7"; a row
    index "#i" of notebook 04 stays)."""
    name, _, row = run["run"].partition("#")
    parts = name.split("/")
    kept = [p for p in parts[-1].split("__") if not p.startswith("seed_")] if len(parts) > 1 else []
    base = "/".join(parts[:-1] + ["__".join(kept)] if kept else parts[:1])
    return base + (f"#{row}" if row else "")


def _budget_total(m: dict[str, Any]) -> dict[str, Any] | None:
    """Every fine-tuning stage a row's model went through since the baseline, summed."""
    stages = [b for b in (m.get("stage_budgets") or [m.get("budget")]) if b]
    if not stages:
        return None
    wall = [b.get("wall_s") for b in stages]
    return {"steps": sum(int(b["steps"]) for b in stages), "images": sum(int(b["images"]) for b in stages),
            "wall_s": sum(wall) if all(w is not None for w in wall) else None, "stages": len(stages)}


def is_trained(m: dict[str, Any]) -> bool:
    """Whether a row's model was trained: False for a method evaluated as applied (notebook 04's
    comparators record `history: None`), which is the same at every seed. (Notebook 01's own
    `trained` says whether that run trained the baseline, not whether the baseline was trained.)"""
    return m.get("history", ()) is not None


def fold_seeds(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per configuration: its seeds' runs folded into one run-like dict whose metrics
    are the first seed's with `top1`, `top5`, `speedup` replaced by their means over the seeds,
    and `top1_std` (None for one run or an untrained row), `n_seeds`, `seeds`, `top1_by_seed`,
    `trained` (False for the training-free rows, identical at every seed) and `budget` (every
    stage summed) added.
    `seed_runs` holds the runs themselves (paired comparisons need them)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault(point_of(run), []).append(run)
    out = []
    for point, members in groups.items():
        members = sorted(members, key=lambda r: (seed_of(r) is None, seed_of(r) or 0))
        first = members[0]["metrics"]
        trained = is_trained(first)  # else evaluated as applied: the same at every seed
        folded = dict(first)
        for key in ("top1", "top5", "speedup"):
            values = [r["metrics"][key] for r in members if isinstance(r["metrics"].get(key), (int, float))]
            if values:
                summ = stats.summary(values)
                folded[key] = summ["mean"]
                # a training-free row is the same at every seed: no spread to report
                folded[f"{key}_std"] = summ["std"] if trained else None
        folded.update(n_seeds=len(members), seeds=[seed_of(r) for r in members], trained=trained,
                      top1_by_seed={str(seed_of(r)): r["metrics"].get("top1") for r in members},
                      budget=_budget_total(first))
        budgets = [_budget_total(r["metrics"]) for r in members]
        walls = [b["wall_s"] for b in budgets if b and b.get("wall_s") is not None]
        if folded["budget"] and walls:
            folded["budget"] = {**folded["budget"], "wall_s": stats.summary(walls)["mean"]}
        variant = members[0].get("variant")
        kept = "__".join(p for p in (variant or "").split("__") if p and not p.startswith("seed_")) or None
        head, *pins = members[0].get("command", "").split(" -p ")  # a configuration's command pins no seed
        command = " -p ".join([head] + [pin for pin in pins if not pin.startswith("seed=")])
        if len(members) > 1:
            command += f" --seeds {len(members)}"
        out.append({**members[0], "run": point, "variant": kept, "command": command, "metrics": folded,
                    "seed_runs": members})
    return out


def method_rank(method: str) -> int:
    """Where a method's rows go in tables (`method_order`; unknown methods last)."""
    order = method_order()
    return order.index(method) if method in order else len(order)


def is_model_row(m: dict[str, Any]) -> bool:
    """Whether metrics carry the MACs and top-1 a table or comparison needs."""
    return isinstance(m.get("macs"), (int, float)) and isinstance(m.get("top1"), (int, float))


SUSPECT_SPEEDUP = 1.1  # a measured speedup this far above the MAC ratio is a measurement to explain, not a finding


def suspect_speedups(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs whose measured speedup exceeds SUSPECT_SPEEDUP x their MAC ratio: fewer MACs cannot
    explain it (in vitprune's history: a bf16 model timed against an fp32 baseline)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    return [r for r in runs if number(r["metrics"].get("speedup")) and number(r["metrics"].get("mac_ratio"))
            and r["metrics"]["speedup"] > SUSPECT_SPEEDUP * r["metrics"]["mac_ratio"]]


def require_runs(runs: list[dict[str, Any]], runs_root: str | os.PathLike | None, profile: str) -> None:
    if not runs:
        where = run_folders.runs_root_or_default(runs_root) / profile
        raise UserError(f"no model runs with metrics.json under {where} (notebooks "
                        f"{', '.join(MODEL_NOTEBOOKS)}); run `python -m vitprune run --profile {profile}` first")
